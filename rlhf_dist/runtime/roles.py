"""The role runtime: a list of role specs in, started and rendezvoused actor groups out.

Every command (PPO, SFT/RM/DPO, labelling, the benchmarks) describes its roles as `RoleSpec`s; this module does
the rest in one order: layout and fit check, placement groups, slots, actors, `ready`, DeepSpeed rendezvous
(roles that ask for it) and `setup`, each wait with a deadline from `timeouts`, and shutdown. A command keeps
only its own verbs on the groups.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Any

from rlhf_dist.dist import cpu_workers
from rlhf_dist.errors import wait_all
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.runtime.groups import YIELD_NICE, ActorGroup, HostedGroup, cores_env, start_actor, stop_all, worker_env
from rlhf_dist.runtime.hosts import RoleHost, plan_hosts
from rlhf_dist.runtime.placement import check_cluster_fits, create_pools, plan_slots


@dataclasses.dataclass(frozen=True)
class RoleSpec:
    name: str
    worker: type  # constructed as worker(spec, rank, world_size) in its own Ray actor
    pool: str
    ranks: int
    spec: Any  # the narrow, per-role settings each rank receives (never the whole config)
    gpus_per_rank: int = 1  # > 1: a tensor-parallel engine owning that many consecutive bundles of one node
    rendezvous: bool = False  # the ranks form a DeepSpeed process group: setup(master_addr, port)
    env: dict = dataclasses.field(default_factory=dict)  # extra environment for this role's processes
    # gpus_per_rank > 1 where the workers are not Ray actors (vLLM on CPU): a seat per bundle holds its share.
    seats: bool = False
    # CPU only: the role's processes run at a lower priority than the engines sharing their cores (see groups.py).
    yields_cpu: bool = False
    # With placement.share_processes: the role's ranks may live in processes shared with other roles (hosts.py).
    hostable: bool = False

    @property
    def gpus(self) -> int:
        return self.ranks * self.gpus_per_rank


def role_gpus(specs) -> dict[str, tuple[str, int]]:
    return {s.name: (s.pool, s.gpus) for s in specs}


class Roles:
    """The started actor groups of one job, by role name; `shutdown` kills them and frees their pools."""

    def __init__(self, specs: list[RoleSpec], pools: dict, run_name: str, cluster, timeouts, log=print):
        import ray

        self.timeouts, self.log, self.groups, self.pools = timeouts, log, {}, {}
        layout = pool_layout(pools, role_gpus(specs))
        check_cluster_fits(pools, layout, ray.cluster_resources(), ray.nodes())
        self.pools = create_pools(pools, layout, run_name, timeouts.actor_start_s)
        try:
            slots = plan_slots(specs, layout)
            self.slots = slots
            env = worker_env(cluster.device, cluster.threads_per_actor)
            # Only on a local CPU cluster: its workers run this interpreter, which `nice` then wraps.
            yield_here = cpu_workers(cluster.device) and not cluster.address and shutil.which("nice") is not None
            hosts = plan_hosts(specs, slots)
            hosted = {role for h in hosts for role, _ in h.members}
            # Roles that do not yield the CPU (the engines: the longest start) are created first: Ray starts only
            # a few worker processes at a time, and the last ones created start last.
            for s in sorted(specs, key=lambda s: s.yields_cpu):
                if s.name in hosted:
                    continue
                nice = YIELD_NICE if s.yields_cpu and yield_here else 0
                self.groups[s.name] = ActorGroup(s.name, s.worker, slots[s.name], self.pools, (s.spec,),
                                                 {**env, **s.env, **cores_env(cluster, s.pool)}, s.seats, nice)
            self.groups.update(self._start_hosts(hosts, specs, env, cluster, yield_here))
            self.groups = {s.name: self.groups[s.name] for s in specs}  # the job's order, for logs and calls
            self.setup_info = self._start(specs)
        except BaseException:
            self.shutdown()
            raise

    def _start_hosts(self, hosts, specs: list[RoleSpec], env: dict, cluster, yield_here: bool) -> dict[str, HostedGroup]:
        """One RoleHost actor per planned host; each hosted role gets a group of its ranks' hosts."""
        import ray

        by_name = {s.name: s for s in specs}
        handles, keys = {}, {}
        for h in hosts:
            members = [by_name[role] for role, _ in h.members]
            nice = YIELD_NICE if yield_here and all(s.yields_cpu for s in members) else 0
            env_h = {**env, **cores_env(cluster, h.pool), "RLHF_DIST_BUNDLES": str(h.bundle), "RLHF_DIST_GPU_SHARE": str(h.gpu_fraction)}
            args = ([(s.name, s.worker, s.spec, rank, s.ranks) for s, (_, rank) in zip(members, h.members)],)
            actor = start_actor(ray.remote(RoleHost), self.pools[h.pool], h.bundle, h.gpu_fraction, env_h, nice, args)
            for role, rank in h.members:
                handles[role, rank], keys[role, rank] = actor, ("host", h.pool, h.bundle)
        return {s.name: HostedGroup(s.name, [handles[s.name, r] for r in range(s.ranks)], [keys[s.name, r] for r in range(s.ranks)])
                for s in specs if (s.name, 0) in handles}

    def _start(self, specs: list[RoleSpec]) -> dict[str, list]:
        t = self.timeouts
        t0 = time.perf_counter()
        readies = [g.submit("ready") for g in self.groups.values()]
        # Roles without a process group load their models at once (the engines take longest to start);
        # the others join their group first, which needs every rank up.
        early = {s.name: self.groups[s.name].submit("setup") for s in specs if not s.rendezvous}
        infos = self.wait(readies, "actor start", t.actor_start_s)
        self.device = infos[0].get("device", "cpu")
        # Where each seat (a TP worker's bundle, CPU) really is, as the seat itself reports it.
        seats = [(role, s) for role, g in self.groups.items() for s in g.seats]
        where = wait_all([s.gpus.remote() for _, s in seats], [f"{role} seat" for role, _ in seats], "seat start", t.actor_start_s)
        self.seat_nodes = {(w["role"], w["rank"], w["bundle"]): w["node"] for w in where}
        i = 0
        for role, g in self.groups.items():
            where = ", ".join(self._where(role, x) for x in infos[i : i + len(g)])
            self.log(f"{role}: {where}")
            i += len(g)
        # Roles with a DeepSpeed process group rendezvous; the others load their models meanwhile.
        submitted = []
        for s in specs:
            g = self.groups[s.name]
            if s.rendezvous:
                addr, port = g.call("master_endpoint", ranks=[0], timeout_s=t.call_s)[0]
                submitted.append(g.submit("setup", addr, port))
            else:
                submitted.append(early[s.name])
        done = self.wait(submitted, "start-up (model load, DeepSpeed rendezvous, engine warm-up)", t.actor_start_s)
        ranks = sum(len(g) for g in self.groups.values())
        procs = len({p for g in self.groups.values() for p in g.processes})
        self.log(f"actors up in {time.perf_counter() - t0:.1f} s ({ranks} actors" + (f" in {procs} processes)" if procs < ranks else ")"))
        out, i = {}, 0
        for s in specs:
            out[s.name], i = done[i : i + s.ranks], i + s.ranks
        return out

    def _where(self, role: str, info: dict) -> str:
        """One rank's process and node; a rank owning several bundles (a TP engine) also names theirs."""
        text = f"rank {info['rank']} pid {info['pid']} on {info['ip']}"
        if info.get("node"):
            text += f" node {info['node'][:12]}"
        slot = self.slots[role][info["rank"]]
        if len(slot.bundles) > 1:
            pool = self.pools[slot.pool]
            # A seat's own report where there are seats; else the node its bundle's group is pinned to (GPU: vLLM's
            # workers take the bundles).
            nodes = sorted({self.seat_nodes.get((role, info["rank"], b), pool.node_of(b))[:12] for b in slot.bundles})
            text += f" (bundles {','.join(map(str, slot.bundles))} on node {', '.join(nodes)})"
        return text

    def placement(self) -> dict[str, list[dict]]:
        """role -> per rank: its pool's bundles and the node id each is pinned to."""
        return {role: [{"rank": r, "pool": s.pool, "bundles": list(s.bundles),
                        "nodes": [self.pools[s.pool].node_of(b) for b in s.bundles]} for r, s in enumerate(slots)]
                for role, slots in self.slots.items()}

    def explain(self, error: Exception) -> Exception:
        """After a failed call: the error, or which rank (and node) is gone (rlhf_dist.runtime.nodes)."""
        from rlhf_dist.runtime.nodes import explain

        try:
            return explain(error, self.groups, self.placement(), self.log)
        except Exception:  # noqa: BLE001 - the diagnosis must never hide the failure it explains
            return error

    def __getitem__(self, role: str) -> ActorGroup:
        return self.groups[role]

    def get(self, role: str) -> ActorGroup | None:
        return self.groups.get(role)

    def wait(self, submitted: list, what: str, timeout_s: float | None = None) -> list:
        """Wait for several `ActorGroup.submit` results at once, with one deadline (timeouts.call_s by default)."""
        refs = [r for rs, _ in submitted for r in rs]
        labels = [lab for _, labs in submitted for lab in labs]
        return wait_all(refs, labels, what, self.timeouts.call_s if timeout_s is None else timeout_s)

    def call(self, role: str, method: str, *args, **kwargs) -> list:
        return self.groups[role].call(method, *args, timeout_s=self.timeouts.call_s, **kwargs)

    def shutdown(self) -> None:
        stop_all(self.groups.values(), self.pools)
        self.groups, self.pools = {}, {}
