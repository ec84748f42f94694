"""The running job's roles: Ray start-up, placement, actor groups, and the weight-sync protocol.

Every remote wait goes through `wait_all` with a deadline from `timeouts`, so a stuck or dead worker turns
into an error naming its role, rank and the operation.
"""
from __future__ import annotations

import os
import time

from rlhf_dist.config import Config, Derived
from rlhf_dist.dist import local_cluster_env
from rlhf_dist.data.batch import concat, split, split_list
from rlhf_dist.errors import WeightSyncError, wait_all
from rlhf_dist.groups import ActorGroup, stop_all, worker_env
from rlhf_dist.placement import check_cluster_fits, create_pools, role_slots


def init_ray(cfg: Config, derived: Derived, log=print) -> bool:
    """Start or join Ray. Returns True if this call started it (and so should shut it down)."""
    import ray
    import torch

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=True)
        return True
    kwargs = {}
    if not torch.cuda.is_available():
        # No GPUs here: Ray's logical GPUs stand in, so the placement code runs unchanged.
        kwargs["num_gpus"] = derived.total_gpus
        log(f"no CUDA device: local Ray with {derived.total_gpus} logical GPUs")
    # A local cluster listens on loopback only, and so do the job's own process groups.
    os.environ.update(local_cluster_env())
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True, **kwargs)
    return True


class Cluster:
    """Owns the placement groups and actor groups of one job."""

    def __init__(self, cfg: Config, derived: Derived, log=print):
        import ray

        from rlhf_dist.learner.workers import CriticWorker, PolicyWorker, ReferenceWorker, RewardModelWorker
        from rlhf_dist.rollout.engine import RolloutEngine, engine_env

        self.cfg, self.derived, self.log = cfg, derived, log
        t = cfg.timeouts
        check_cluster_fits(cfg, derived, ray.cluster_resources(), ray.nodes())
        self.pools = create_pools(cfg, derived, t.actor_start_s)
        slots = role_slots(cfg, derived)
        env = worker_env(cfg.cluster.device, cfg.cluster.threads_per_actor)
        self.groups: dict[str, ActorGroup] = {}
        classes = {"policy": PolicyWorker, "critic": CriticWorker, "reference": ReferenceWorker, "reward": RewardModelWorker}
        # Only the roles this job uses get actors: no critic for critic-free estimators, no reward model
        # worker without reward.model.
        classes = {role: cls for role, cls in classes.items() if role in slots}
        for role, cls in classes.items():
            self.groups[role] = ActorGroup(role, cls, slots[role], self.pools, (cfg,), env)
        self.groups["rollout"] = ActorGroup(
            "rollout", RolloutEngine, slots["rollout"], self.pools, (cfg,), {**env, **engine_env(cfg)}
        )
        self.policy, self.critic = self.groups["policy"], self.groups.get("critic")
        self.reference, self.rollout = self.groups["reference"], self.groups["rollout"]
        self.reward = self.groups.get("reward")
        self.version = None  # weights version last synced to the engines
        self._start()

    # --- start-up ---
    def _start(self) -> None:
        t = self.cfg.timeouts
        t0 = time.perf_counter()
        refs, labels = [], []
        for g in self.groups.values():
            r, lab = g.submit("ready")
            refs += r
            labels += lab
        infos = wait_all(refs, labels, "actor start", t.actor_start_s)
        self.device = infos[0]["device"]
        for role in self.groups:
            where = ", ".join(f"rank {i['rank']} pid {i['pid']} on {i['ip']}" for i in infos if i["role"] == role)
            self.log(f"{role}: {where}")
        # Learners rendezvous (DeepSpeed's default group); the others load their models meanwhile.
        refs, labels = [], []
        # Groups with a DeepSpeed process group rendezvous: the learners, and a ZeRO-3 reference.
        rendezvous = self.learner_groups() + ([self.reference] if self.cfg.placement.reference.zero_stage == 3 else [])
        for g in rendezvous:
            addr, port = g.call("master_endpoint", ranks=[0], timeout_s=t.call_s)[0]
            r, lab = g.submit("setup", addr, port)
            refs += r
            labels += lab
        for g in [g for g in [self.reference, self.rollout, self.reward] if g is not None and g not in rendezvous]:
            r, lab = g.submit("setup")
            refs += r
            labels += lab
        wait_all(refs, labels, "model load and DeepSpeed rendezvous", t.actor_start_s)
        self.log(f"actors up in {time.perf_counter() - t0:.1f} s ({sum(len(g) for g in self.groups.values())} actors)")
        self._init_weight_sync()

    def _init_weight_sync(self) -> None:
        t = self.cfg.timeouts
        self.buckets = self.policy.call("sync_plan", timeout_s=t.call_s)[0]
        addr, port = self.policy.call("master_endpoint", ranks=[0], timeout_s=t.call_s)[0]
        tp = self.cfg.placement.rollout.tensor_parallel_size
        world = 1 + len(self.rollout) * tp
        backend = "nccl" if self.device.startswith("cuda") else "gloo"
        pl = self.cfg.placement
        if backend == "nccl" and pl.rollout.pool == pl.policy.pool:
            # NCCL refuses two ranks on one GPU. Until the CUDA-IPC handoff (sync/ipc.py) is wired in, colocated
            # engines receive over gloo with the buckets staged in host memory: slower, same protocol and checks.
            backend = "gloo"
            self.log("weight sync: policy and rollout share GPUs, so buckets go over gloo through host memory")
        self.sync_backend = backend
        refs, labels = self.policy.submit("init_weight_sync", addr, port, world, backend)
        r, lab = self.rollout.submit(
            "init_weight_sync", per_rank=[(addr, port, 1 + e * tp, world, backend) for e in range(len(self.rollout))]
        )
        wait_all(refs + r, labels + lab, f"weight-sync rendezvous ({backend}, {world} ranks)", t.rendezvous_s)
        total = sum(b.nbytes for b in self.buckets)
        self.log(f"weight sync: {len(self.buckets)} buckets, {total / 2**20:.1f} MiB, {world} ranks over {backend}")

    # --- per-step operations ---
    def generate(self, prompts: list[list[int]], seed: int, sampling: dict | None = None) -> dict:
        n = len(self.rollout)
        chunks = split_list(prompts, n)
        offsets = [i * len(chunks[0]) for i in range(n)]
        outs = self.rollout.call(
            "generate", per_rank=[(c, seed + o, self.version, sampling) for c, o in zip(chunks, offsets)],
            timeout_s=self.cfg.timeouts.call_s,
        )
        return {
            "responses": [r for o in outs for r in o["responses"]],
            "logprobs": [r for o in outs for r in o["logprobs"]],
            "finish_reasons": [r for o in outs for r in o["finish_reasons"]],
            "engine_seconds": [o["seconds"] for o in outs],
        }

    def submit_infer(self, group: ActorGroup, batch: dict):
        return group.submit("infer", per_rank=[(s,) for s in split(batch, len(group))])

    def gather_infer(self, submitted, what: str) -> dict:
        refs, labels = submitted
        return concat(wait_all(refs, labels, what, self.cfg.timeouts.call_s))

    def submit_train(self, group: ActorGroup, batch: dict, loss_fn, seed: int):
        return group.submit("train", per_rank=[(s, loss_fn, seed + r) for r, s in enumerate(split(batch, len(group)))])

    def reward_scores(self, texts: list[str]) -> list[float]:
        parts = self.reward.call(
            "score", per_rank=[(c,) for c in split_list(texts, len(self.reward))], timeout_s=self.cfg.timeouts.call_s
        )
        return [s for p in parts for s in p]

    def sync_weights(self, version: int, verify: bool) -> dict:
        """Policy -> every engine; with `verify`, each engine worker's checksums must equal the learner's."""
        t0 = time.perf_counter()
        refs, labels = self.policy.submit("broadcast_weights", verify)
        r, lab = self.rollout.submit("receive_weights", self.buckets, version, verify)
        results = wait_all(refs + r, labels + lab, f"weight sync v{version}", self.cfg.timeouts.call_s)
        sent = results[0]
        for e, workers in enumerate(results[len(refs) :]):
            for w, got in enumerate(workers):
                if verify and got["checksums"] != sent["checksums"]:
                    bad = next(i for i, (a, b) in enumerate(zip(sent["checksums"], got["checksums"])) if a != b)
                    names = self.buckets[bad].names
                    raise WeightSyncError(
                        f"weight sync v{version}: rollout engine {e} worker {w} received different bytes than the "
                        f"policy sent in bucket {bad} ({names[0]} .. {names[-1]})"
                    )
        self.version = version  # every later generate() checks that the engines hold this version
        engines = [w for workers in results[len(refs) :] for w in workers]
        return {
            "sync/seconds": time.perf_counter() - t0,
            "sync/learner_gather_pack_s": sent["seconds"] - sent["broadcast_s"],
            "sync/learner_broadcast_s": sent["broadcast_s"],
            "sync/engine_load_s": max(w["load_s"] for w in engines),
            "sync/bytes": sent["bytes"],
            "sync/verified": bool(verify),
            "sync/version": version,
        }

    def learner_groups(self) -> list[ActorGroup]:
        return [g for g in (self.policy, self.critic) if g is not None]

    def save_checkpoint(self, path: str) -> None:
        """Every learner rank writes its own partitions (all ranks must join DeepSpeed's save)."""
        self._on_learners("save_checkpoint", path, "checkpoint save")

    def load_checkpoint(self, path: str) -> None:
        self._on_learners("load_checkpoint", path, "checkpoint load")

    def _on_learners(self, method: str, path: str, what: str) -> None:
        refs, labels = [], []
        for g in self.learner_groups():
            r, lab = g.submit(method, f"{path}/{g.role}")
            refs, labels = refs + r, labels + lab
        wait_all(refs, labels, what, self.cfg.timeouts.call_s)

    def save_policy(self, path: str) -> None:
        self.policy.call("save_hf", path, self.cfg.sync.bucket_mb, timeout_s=self.cfg.timeouts.call_s)

    def shutdown(self) -> None:
        stop_all(self.groups.values(), self.pools)
