"""Process-local helpers for workers: device choice, threads, addresses, the default process group."""
from __future__ import annotations

import datetime
import os
import socket
import sys

import torch


def use_cuda(device: str) -> bool:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("cluster.device is 'cuda' but torch sees no CUDA device in this worker")
        return True
    return device == "auto" and torch.cuda.is_available()


def cpu_workers(device: str) -> bool:
    """The driver's reading of cluster.device for the workers' environment: "auto" is CPU unless this machine
    sees CUDA (a driver without GPUs steering a GPU cluster should say `cuda`)."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def backend_for(device: str) -> str:
    return "nccl" if use_cuda(device) else "gloo"


def torch_device(device: str) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES per actor, so the actor's GPU is always cuda:0 inside it.
    return torch.device("cuda", 0) if use_cuda(device) else torch.device("cpu")


# Set for every worker of a local cluster started by rlhf_dist: rendezvous then stays on loopback.
LOCAL_IP_ENV = "RLHF_DIST_NODE_IP"


def node_id() -> str:
    """The Ray node this process runs on (several nodes of one machine share an address)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def node_ip() -> str:
    if os.environ.get(LOCAL_IP_ENV):
        return os.environ[LOCAL_IP_ENV]
    import ray

    return ray.util.get_node_ip_address()


def local_cluster_env() -> dict[str, str]:
    """Environment that keeps a single-machine job's process groups on the loopback interface."""
    env = {LOCAL_IP_ENV: "127.0.0.1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# Listening sockets reserved by reserve_port, by port, until a TCPStore in this process takes one over. Holding
# the socket closes the race of picking a free port and binding it later, and lets the store listen on the
# node address only (a TCPStore told only a port listens on every interface).
_reserved: dict[int, socket.socket] = {}


def reserve_port() -> tuple[str, int]:
    """(node address, port) for a rendezvous this process will host, already listening on that address."""
    host = node_ip()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    _reserved[port] = sock
    return host, port


def release_port(port: int) -> None:
    """Close a port reserve_port made that will not host a store after all."""
    sock = _reserved.pop(port, None)
    if sock is not None:
        sock.close()


def tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: datetime.timedelta):
    """A TCPStore; the master serves it from the socket reserve_port made (so only on the node address)."""
    sock = _reserved.pop(port, None) if is_master else None
    if sock is None:
        return torch.distributed.TCPStore(host, port, world_size, is_master, timeout=timeout)
    # The store owns the descriptor from here on.
    return torch.distributed.TCPStore(host, port, world_size, True, timeout=timeout, master_listen_fd=sock.detach())


CORES_ENV = "RLHF_DIST_CPU_CORES"  # set per pool by the runtime (cluster.cpu_cores)


def parse_cores(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        first, last = int(lo), int(hi or lo)  # ValueError for anything but numbers
        if first < 0 or last < first or last > 65535:
            raise ValueError(f"bad core range {part!r}")
        out.update(range(first, last + 1))
    return out


def pin_cores() -> None:
    """Pin this process (and every thread it starts later) to the cores its pool was given, if any."""
    cores = os.environ.get(CORES_ENV)
    if cores:
        os.sched_setaffinity(0, parse_cores(cores))


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def timedelta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)
