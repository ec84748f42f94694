"""Roles sharing a process (`placement.share_processes`): the ranks of several roles on one bundle live in one
actor, a `RoleHost`, instead of one process each.

Each process pays the same start-up (Python, torch, transformers, DeepSpeed: about 4 s of CPU on the demo's
machine) whatever it then runs, so on a small machine fewer processes start sooner; on GPUs one process per
GPU also holds one CUDA context instead of several. The roles' calls then run one after another in their host,
in the order the controller submits them (the same on every host, so the collectives of one role's ranks always
meet).

Which roles may share is decided here, for CPU and GPU alike: learner-side roles the job marks `hostable`
(never the engines), without ZeRO-3 (transformers keeps one global ZeRO-3 setting per process), whose DeepSpeed
process groups, where they have one, span the same ranks (a process has one default group).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class HostPlan:
    pool: str
    bundle: int
    members: tuple[tuple[str, int], ...]  # (role, rank), in the job's role order
    gpu_fraction: float  # the members' shares of the bundle's GPU, together


def plan_hosts(specs, slots: dict) -> list[HostPlan]:
    """One host per bundle holding a hostable role's rank. Of the hostable roles with a process group, those
    spanning a different number of ranks than the pool's first such role keep processes of their own."""
    worlds: dict[str, int] = {}  # pool -> ranks of the first hostable role with a process group
    chosen = []
    for s in specs:
        if not s.hostable or s.gpus_per_rank != 1 or s.env:  # a role with its own environment keeps its process
            continue
        if s.rendezvous and worlds.setdefault(s.pool, s.ranks) != s.ranks:
            continue
        chosen.append(s)
    by_bundle: dict[tuple[str, int], list] = {}
    for s in chosen:
        for rank, slot in enumerate(slots[s.name]):
            by_bundle.setdefault((slot.pool, slot.bundle), []).append((s.name, rank, slot.gpu_fraction))
    return [HostPlan(pool, bundle, tuple((role, rank) for role, rank, _ in members), sum(f for *_, f in members))
            for (pool, bundle), members in by_bundle.items()]


class RoleHost:
    """The workers of several roles in one process, one rank each, called by role name."""

    def __init__(self, members: list[tuple[str, type, object, int, int]]):
        """members: (role, worker class, the role's spec, rank, world size), constructed in this order."""
        self.workers = {role: cls(spec, rank, world) for role, cls, spec, rank, world in members}

    def call(self, role: str, method: str, *args):
        return getattr(self.workers[role], method)(*args)
