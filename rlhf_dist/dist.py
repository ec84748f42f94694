"""Process-local helpers for workers: device choice, threads, addresses, the default process group."""
from __future__ import annotations

import datetime
import os
import socket

import torch


def use_cuda(device: str) -> bool:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("cluster.device is 'cuda' but torch sees no CUDA device in this worker")
        return True
    return device == "auto" and torch.cuda.is_available()


def backend_for(device: str) -> str:
    return "nccl" if use_cuda(device) else "gloo"


def torch_device(device: str) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES per actor, so the actor's GPU is always cuda:0 inside it.
    return torch.device("cuda", 0) if use_cuda(device) else torch.device("cpu")


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def timedelta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)
