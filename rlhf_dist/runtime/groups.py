"""An actor group: N ranks of one role placed on pool bundles, called together with one deadline."""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from rlhf_dist.dist import CORES_ENV, LOCAL_IP_ENV, cpu_workers
from rlhf_dist.errors import wait_all
from rlhf_dist.runtime.placement import PoolGroups, Slot, remove_pools
from rlhf_dist.runtime.seats import BundleSeat


def worker_env(device: str, threads: int) -> dict[str, str]:
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # Workers' own progress bars and load reports would bury the driver's output.
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    # A local cluster's workers rendezvous on loopback (see rlhf_dist.dist.local_cluster_env).
    for key in (LOCAL_IP_ENV, "GLOO_SOCKET_IFNAME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    if cpu_workers(device):
        # On CPU DeepSpeed would otherwise probe for accelerators; threads are capped so roles share cores.
        env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads)})
        # Nothing is compiled on CPU (engines run eager by default; engine_env re-enables compiling where they
        # do not): without this, DeepSpeed's optimizer check imports torch's compiler stack in every learner and
        # vLLM's sampler compiles its log-prob gather on the first generation (about 1 s and 2 s of start-up).
        env["TORCHDYNAMO_DISABLE"] = "1"
    return env


# Niceness added to the processes of roles that yield the CPU to the engines (RoleSpec.yields_cpu; local CPU
# clusters only, see Roles).
# An engine's start (vLLM's import and set-up) is the longest of any role and single-threaded; among equals it
# gets 1/N of the cores and finishes last, long after the others. Four steps of niceness give it about 2.4
# times a learner's share (the kernel's weights), so it finishes with them. After start-up the phases run one
# at a time, where priorities change nothing.
YIELD_NICE = 4


def cores_env(cluster, pool: str) -> dict:
    """The cores a pool's processes are pinned to (`cluster.cpu_cores`), applied by `dist.pin_cores` at start."""
    cores = cluster.cpu_cores.get(pool)
    return {CORES_ENV: cores} if cores and cpu_workers(cluster.device) else {}


def stop_all(groups, pools: dict) -> None:
    """Kill the groups' actors and remove the pools' placement groups: best effort, on the way out."""
    for g in groups:
        try:
            g.kill()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
    remove_pools(pools)


def on_bundle(pool: PoolGroups, bundle: int):
    """The scheduling strategy of an actor on one of the pool's bundles (pool-wide index)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg, index = pool.locate(bundle)
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def start_actor(remote_cls, pool: PoolGroups, bundle: int, num_gpus: float, env: dict, nice: int, args: tuple):
    """One actor on a pool's bundle, with its environment (and niceness, see YIELD_NICE)."""
    # Ray's documented way to wrap the worker interpreter: the process starts niced, before any import.
    launch = {"py_executable": f"nice -n {nice} {sys.executable}"} if nice else {}
    return remote_cls.options(
        # CPUs are not reserved: on small machines roles share cores (threads are capped instead).
        num_cpus=0,
        num_gpus=num_gpus,
        scheduling_strategy=on_bundle(pool, bundle),
        runtime_env={"env_vars": env, **launch},
        max_restarts=0,
    ).remote(*args)


class ActorGroup:
    """One actor per slot. A slot of several bundles (a tensor-parallel engine) gets an actor holding no GPU:
    its workers use the bundles' GPUs (`RLHF_DIST_BUNDLES` tells it which), and with `seats` a `BundleSeat`
    per bundle reserves them (`RLHF_DIST_SEATS` tells the actor that its workers need not take them).
    `processes` names each rank's process (threads per phase count processes, not ranks)."""

    def __init__(self, role: str, worker_cls: type, slots: Sequence[Slot], pools: dict, args: tuple, env: dict[str, str],
                 seats: bool = False, nice: int = 0):
        import ray

        self.role = role
        remote_cls = ray.remote(worker_cls)
        self.actors, self.seats, self.seat_bundles = [], [], []
        for rank, slot in enumerate(slots):
            tp = len(slot.bundles) > 1
            pool = pools[slot.pool]
            # RLHF_DIST_BUNDLES names the pool's bundles; vLLM's Ray workers (GPU) take them by their index inside
            # the node's placement group the engine actor runs in (RLHF_DIST_GROUP_BUNDLES).
            bundles = {"RLHF_DIST_BUNDLES": ",".join(map(str, slot.bundles)), "RLHF_DIST_GPU_SHARE": str(slot.gpu_fraction),
                       "RLHF_DIST_GROUP_BUNDLES": ",".join(str(pool.locate(b)[1]) for b in slot.bundles),
                       "RLHF_DIST_SEATS": "1" if tp and seats else ""}
            self.actors.append(start_actor(remote_cls, pool, slot.bundle, 0 if tp else slot.gpu_fraction,
                                           {**env, **bundles}, nice, (*args, rank, len(slots))))
            if tp and seats:
                seat = ray.remote(BundleSeat)
                self.seats += [
                    seat.options(num_cpus=0, num_gpus=slot.gpu_fraction, max_restarts=0, scheduling_strategy=on_bundle(pool, b))
                    .remote(role, rank, b)
                    for b in slot.bundles
                ]
                self.seat_bundles += [(rank, b) for b in slot.bundles]
        self.processes = [(role, rank) for rank in range(len(self.actors))]

    def __len__(self) -> int:
        return len(self.actors)

    def labels(self, ranks: Sequence[int] | None = None) -> list[str]:
        return [f"{self.role} rank {r}" for r in (ranks if ranks is not None else range(len(self.actors)))]

    def submit(self, method: str, *args: Any, ranks: Sequence[int] | None = None, per_rank: Sequence[tuple] | None = None):
        """Start `method` on the given ranks (all by default); per_rank gives each rank its own arguments."""
        ranks = list(ranks if ranks is not None else range(len(self.actors)))
        refs = []
        for i, r in enumerate(ranks):
            a = per_rank[i] if per_rank is not None else args
            refs.append(self._invoke(self.actors[r], method, a))
        return refs, self.labels(ranks)

    def _invoke(self, actor, method: str, args: tuple):
        return getattr(actor, method).remote(*args)

    def call(self, method: str, *args: Any, timeout_s: float, ranks=None, per_rank=None) -> list:
        refs, labels = self.submit(method, *args, ranks=ranks, per_rank=per_rank)
        return wait_all(refs, labels, f"{self.role}.{method}", timeout_s)

    def probes(self) -> list[tuple[str, object, str]]:
        """(label, actor, method) to ask each rank and seat whether it is there (rlhf_dist.runtime.nodes)."""
        ranks = [(f"{self.role} rank {r}", a, "ready") for r, a in enumerate(self.actors)]
        return ranks + [(f"{self.role} rank {r} seat {b}", s, "gpus") for (r, b), s in zip(self.seat_bundles, self.seats)]

    def kill(self) -> None:
        import ray

        for a in self.actors + self.seats:
            ray.kill(a, no_restart=True)


class HostedGroup(ActorGroup):
    """A role whose ranks live in shared processes (rlhf_dist.runtime.hosts): calls go through RoleHost.call."""

    def __init__(self, role: str, hosts: list, processes: list):
        self.role, self.actors, self.seats, self.seat_bundles, self.processes = role, list(hosts), [], [], list(processes)

    def probes(self) -> list[tuple[str, object, str]]:
        return [(f"{self.role} rank {r}", a, "call") for r, a in enumerate(self.actors)]

    def _invoke(self, actor, method: str, args: tuple):
        return actor.call.remote(self.role, method, *args)
