"""CPU threads per phase: the actors that run in a phase split the node's cores, so a phase that runs alone
(generation, a lone update) gets them all. GPU runs are left alone. Workers apply a share with `set_threads`."""
from __future__ import annotations

import os

from rlhf_dist.dist import cpu_workers


def node_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share(cores: int, actors: int) -> int:
    return max(1, cores // max(1, actors))


def phase_threads_on(cluster, tensor_parallel_size: int) -> bool:
    """Threads per phase apply: CPU workers, `cluster.phase_threads`, and single-worker engines (a TP engine's
    workers are other processes, which take no share)."""
    return cpu_workers(cluster.device) and cluster.phase_threads and tensor_parallel_size == 1


def engine_threads(cluster, engines: int, tensor_parallel_size: int) -> int:
    """CPU: the threads a single-worker engine generates with under threads per phase (all it gets when it runs
    alone). The engine sets up with them too: vLLM's CPU kernels keep the work split they were set up with
    (measured: an engine set up on 1 thread and given 2 per phase generated about 20% slower than one set up on 2)."""
    if phase_threads_on(cluster, tensor_parallel_size):
        return share(cluster.phase_cores or node_cores(), engines)
    return cluster.threads_per_actor


class PhaseThreads:
    """Sets each process's torch threads before a phase, calling only the processes whose share changes.
    Processes, not roles: roles sharing a process (placement.share_processes) share its threads, so a share set
    through one of them holds for the others too.
    `cores`: the node's cores (all actors are counted as one node's: on several CPU nodes this under-uses them)."""

    def __init__(self, roles, enabled: bool, cores: int | None):
        self.roles, self.enabled = roles, enabled
        self.cores = cores or node_cores()
        self.current: dict = {}  # process -> threads

    def phase(self, *groups) -> None:
        groups = [g for g in groups if g is not None]
        if not self.enabled or not groups:
            return
        n = share(self.cores, len({p for g in groups for p in g.processes}))
        calls, changed = [], set()
        for g in groups:
            ranks = [r for r, p in enumerate(g.processes) if self.current.get(p) != n and p not in changed]
            if ranks:
                calls.append(g.submit("set_threads", n, ranks=ranks))
                changed.update(g.processes[r] for r in ranks)
        self.roles.wait(calls, f"set {n} threads per process")
        self.current.update(dict.fromkeys(changed, n))
