"""The controller's side of weight sync: the bucket plan agreed once at set-up, the sync group's rendezvous,
and each versioned sync with its verification (every engine worker must report the bytes the policy sent)."""
from __future__ import annotations

import time

from rlhf_dist.errors import WeightSyncError
from rlhf_dist.sync.probe import ProbeSet, worst_difference


class WeightSync:
    def __init__(self, roles, device: str, same_pool: bool, tp: int, bucket_mb: float, timeouts, log=print, payload: str = "full"):
        """`payload`: what the policy sends (rlhf_dist.learner.lora: "full", "adapter" or "merged")."""
        self.roles, self.timeouts, self.tp, self.payload = roles, timeouts, tp, payload
        self.policy, self.rollout = roles["policy"], roles["rollout"]
        self.version = None  # weights version last synced to the engines
        self.probe: ProbeSet | None = None  # scored after every verified sync (set_probe)
        self.probe_limit: float | None = None
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl" and same_pool:
            # NCCL refuses two ranks on one GPU. Until the CUDA-IPC handoff (benchmarks/ipc_buckets.py) is wired in, colocated
            # engines receive over gloo with the buckets staged in host memory: slower, same protocol and checks.
            backend = "gloo"
            log("weight sync: policy and rollout share GPUs, so buckets go over gloo through host memory")
        self.backend = backend
        # The plan is agreed once, here: the engines keep it, so a sync ships only the weights.
        self.buckets = self.policy.call("sync_plan", bucket_mb, timeout_s=timeouts.call_s)[0]
        self.names = [n for b in self.buckets for n in b.names]
        addr, port = self.policy.call("master_endpoint", ranks=[0], timeout_s=timeouts.call_s)[0]
        world = 1 + len(self.rollout) * tp
        per_engine = [(addr, port, 1 + e * tp, world, backend, self.buckets) for e in range(len(self.rollout))]
        joined = roles.wait(
            [self.policy.submit("init_weight_sync", addr, port, world, backend),
             self.rollout.submit("init_weight_sync", per_rank=per_engine)],
            f"weight-sync rendezvous ({backend}, {world} ranks)", timeouts.rendezvous_s,
        )
        # How the engines' workers load what they receive (rlhf_dist.sync.receiver), said once.
        self.engine_load = sorted({w["engine_load"] for workers in joined[len(self.policy) :] for w in workers})
        total = sum(b.nbytes for b in self.buckets)
        log(f"weight sync: {len(self.buckets)} buckets, {total / 2**20:.1f} MiB ({payload} weights), {world} ranks over "
            f"{backend}; engines load through {' / '.join(self.engine_load)}")

    def set_probe(self, probe: ProbeSet | None, limit: float | None) -> None:
        """After every verified sync, the engines score `probe` and the learner too; with `limit` (sync.max_logprob_diff)
        a larger difference stops the run at that sync."""
        self.probe, self.probe_limit = probe, limit

    def replan(self, bucket_mb: float, payload: str | None = None) -> None:
        """Another bucket size (or payload) for learner and engines alike (the sync benchmark compares them)."""
        self.payload = payload or self.payload
        self.buckets = self.policy.call("sync_plan", bucket_mb, self.payload, timeout_s=self.timeouts.call_s)[0]
        self.names = [n for b in self.buckets for n in b.names]
        self.rollout.call("set_sync_plan", self.buckets, self.payload, timeout_s=self.timeouts.call_s)

    def sync(self, version: int, verify: bool) -> dict:
        """Policy -> every engine; with `verify`, each engine worker's checksums must equal the learner's."""
        t0 = time.perf_counter()
        # The engines' calls go first: the broadcast starts when they join it, and the driver submits one call at
        # a time.
        results = self.roles.wait(
            [self.rollout.submit("receive_weights", version, verify), self.policy.submit("broadcast_weights", verify)],
            f"weight sync v{version}",
        )
        engines, sent = results[: len(self.rollout)], results[len(self.rollout)]
        for e, workers in enumerate(engines):
            for w, got in enumerate(workers):
                if got["left_in_stream"] or got["not_written"] or got["consumed"] != len(self.names):
                    raise WeightSyncError(
                        f"weight sync v{version}: rollout engine {e} worker {w}: vLLM's loader took {got['consumed']} of "
                        f"the policy's {len(self.names)} tensors" + _named("; left in the stream", got["left_in_stream"])
                        + _named("; adapter tensors it did not load" if self.payload == "adapter"
                                 else "; engine parameters it did not write", got["not_written"])
                    )
                if verify and got["checksums"] != sent["checksums"]:
                    bad = next(i for i, (a, b) in enumerate(zip(sent["checksums"], got["checksums"])) if a != b)
                    names = self.buckets[bad].names
                    raise WeightSyncError(
                        f"weight sync v{version}: rollout engine {e} worker {w} received different bytes than the "
                        f"policy sent in bucket {bad} ({names[0]} .. {names[-1]})"
                    )
        probed = self._check_probe(version) if verify and self.probe is not None else {}
        self.version = version  # every later generate() checks that the engines hold this version
        workers = [w for ws in engines for w in ws]
        return {
            **probed,
            "sync/seconds": time.perf_counter() - t0,
            "sync/learner_gather_pack_s": sent["seconds"] - sent["broadcast_s"],
            "sync/learner_broadcast_s": sent["broadcast_s"],
            "sync/engine_load_s": max(w["load_s"] for w in workers),
            "sync/bytes": sent["bytes"],
            "sync/verified": bool(verify),
            "sync/version": version,
        }


    def _check_probe(self, version: int) -> dict:
        """Every engine and the policy score the probe set (the policy on all its ranks: ZeRO-3 gathers need them)."""
        t0 = time.perf_counter()
        p = self.probe
        results = self.roles.wait([self.rollout.submit("score", p.seqs, p.starts), self.policy.submit("probe_logprobs", p.seqs, p.starts)],
                                  f"weight probe v{version} ({len(p.seqs)} sequences)")
        learner = results[len(self.rollout)]
        worst = 0.0
        for e, engine in enumerate(results[: len(self.rollout)]):
            diff, seq, tok = worst_difference(engine, learner)
            worst = max(worst, diff)
            if self.probe_limit is not None and not diff <= self.probe_limit:
                raise WeightSyncError(
                    f"weight sync v{version}: rollout engine {e} scores the probe set up to {diff:.3g} away from the "
                    f"policy's log-probs (sequence {seq}, response token {tok}), more than sync.max_logprob_diff="
                    f"{self.probe_limit:g}: the engine does not compute with the weights the policy sent"
                )
        return {"sync/probe_logprob_diff_max": worst, "sync/probe_s": time.perf_counter() - t0}


def _named(what: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{what}: {', '.join(names[:5])}{more}"


def check_logprob_match(diff_max: float, limit: float | None, step: int) -> None:
    """The engines' log-probs of the tokens they sampled against the learner's for the same sequences: with
    `sync.max_logprob_diff` set, a larger gap means the engines do not hold the policy's weights."""
    if limit is not None and not diff_max <= limit:
        raise WeightSyncError(
            f"step {step}: engine and learner log-probs of the same sampled tokens differ by up to {diff_max:.3g}, "
            f"more than sync.max_logprob_diff={limit:g}: the engines do not hold the weights the policy trains"
        )
