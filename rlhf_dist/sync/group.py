"""A dedicated process group for weight sync, separate from DeepSpeed's default group and vLLM's own.

Rank 0 is the policy learner's rank 0; engines' workers take ranks 1..N. Built from a TCPStore and the
backend's ProcessGroup class directly, so it never touches either side's default process group. The only
difference between CPU and GPU is the backend (gloo or NCCL).
"""
from __future__ import annotations

import datetime
import time

import torch
import torch.distributed as dist

from rlhf_dist.dist import tcp_store
from rlhf_dist.errors import WaitTimeout


class SyncGroup:
    """`timeout_s` bounds the rendezvous (timeouts.rendezvous_s); `collective_s` each broadcast
    (timeouts.collective_s; the rendezvous deadline when not given)."""

    def __init__(self, master_addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                 collective_s: float | None = None):
        self.rank, self.world_size, self.backend = rank, world_size, backend
        t0 = time.monotonic()
        try:
            self._connect(master_addr, port, timeout_s, timeout_s if collective_s is None else collective_s)
        except (RuntimeError, dist.DistStoreError) as e:
            raise WaitTimeout(
                f"weight-sync rendezvous: rank {rank} of {world_size} ({backend}, {master_addr}:{port}) gave up after "
                f"{time.monotonic() - t0:.0f} s (timeouts.rendezvous_s={timeout_s:g}) waiting for the other ranks: "
                f"{str(e).splitlines()[0]}"
            ) from None

    def _connect(self, master_addr: str, port: int, timeout_s: float, collective_s: float) -> None:
        rank, world_size = self.rank, self.world_size
        # The store's deadline is the rendezvous (every rank connects); the group's is each collective.
        timeout = datetime.timedelta(seconds=collective_s)
        # The store must outlive the group: keep a reference.
        self.store = tcp_store(master_addr, port, world_size, rank == 0, datetime.timedelta(seconds=timeout_s))
        prefixed = dist.PrefixStore("rlhf_dist/weight_sync", self.store)
        if self.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
            self.device = torch.device("cpu")

    def start_broadcast(self, tensor: torch.Tensor):
        """The broadcast runs on the backend's own threads (or stream); `.wait()` on the result ends it, bounded by
        the group's collective deadline."""
        return self.pg.broadcast(tensor, 0)
