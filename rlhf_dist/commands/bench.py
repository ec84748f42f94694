"""Benchmarks: rollout throughput, weight-sync bandwidth, and a PPO step's phase breakdown. Each prints a table
and writes JSON; each compares the framework with the plain library doing the same work in the same run."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

from rlhf_dist.config import Config, derive


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "torch": torch.__version__}
    import os

    info["cpus"] = os.cpu_count()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    head = "  ".join(f"{c:>{widths[c]}}" for c in columns)
    lines = [head, "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(f"{_fmt(r.get(c)):>{widths[c]}}" for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def medians(rows: list[dict], key: str, by: tuple[str, ...]) -> list[dict]:
    """Median of `key` per group of rows sharing the `by` columns (the number to compare across paths)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[b] for b in by), []).append(r[key])
    return [{**dict(zip(by, k)), f"median_{key}": statistics.median(v), "runs": len(v)} for k, v in groups.items()]


def write(out: str | None, kind: str, payload: dict) -> Path:
    """The results as JSON: --out (checked before the benchmark ran) or the project's benchmarks/results/."""
    from rlhf_dist.outputs import write_file

    path = Path(out or f"benchmarks/results/{kind}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, json.dumps({"benchmark": kind, "machine": machine(), **payload}, indent=2))


def _prompts(cfg: Config, n: int, prompt_len: int) -> list[list[int]]:
    import random

    from transformers import AutoConfig, AutoTokenizer

    # Ids the tokenizer knows and the model can embed.
    vocab = min(len(AutoTokenizer.from_pretrained(cfg.model.policy)), AutoConfig.from_pretrained(cfg.model.policy).vocab_size)
    rng = random.Random(0)
    # Random token ids: lengths are exact, and no prefix is shared between prompts.
    return [[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(n)]


def bench_rollout(cfg: Config, prompts: int, prompt_len: int, repeats: int, log=print) -> dict:
    """The framework's engines (Ray actors, requests split across engines) vs vLLM called directly."""
    from rlhf_dist.dist import cpu_workers
    from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec
    from rlhf_dist.rollout.requests import submit_generate
    from rlhf_dist.runtime.roles import Roles, RoleSpec
    from rlhf_dist.runtime.scaffold import ray_session

    derived = derive(cfg)
    batch = _prompts(cfg, prompts, prompt_len)
    rows = []
    r, env, spec = cfg.placement.rollout, engine_env(cfg), engine_spec(cfg)
    specs = [RoleSpec("rollout", RolloutEngine, r.pool, r.num_engines, spec, gpus_per_rank=r.tensor_parallel_size, env=env,
                      seats=cpu_workers(cfg.cluster.device)),
             # vLLM directly, one engine in a plain actor on the first engine's bundle: same prompts, same settings.
             RoleSpec("vllm-direct", DirectVLLM, r.pool, 1, spec, env=env)]
    with ray_session(cfg, derived, log):
        roles = Roles(specs, cfg.placement.pools, cfg.run.name, cfg.cluster, cfg.timeouts, log)
        group, direct = roles["rollout"], roles["vllm-direct"]
        n = len(group)
        # As training sends them: shards over the engines, sample j seeded seed + j (direct vLLM seeds the same way).
        generate = lambda seed: roles.wait([submit_generate(group, batch, seed, None)], "rollout.generate")  # noqa: E731
        generate(0)  # warm-up at full size
        direct.call("run", batch, 0, timeout_s=cfg.timeouts.call_s)
        # Timings drift by 20% or more between runs on a shared machine: the two sides alternate.
        for rep in range(repeats):
            t0 = time.perf_counter()
            outs = generate(rep * 10_000)
            wall = time.perf_counter() - t0
            tokens = sum(len(r) for o in outs for r in o["responses"])
            rows.append(_rollout_row("rlhf_dist engines", n, rep, len(batch), tokens, wall))
            out = direct.call("run", batch, rep * 10_000, timeout_s=cfg.timeouts.call_s)[0]
            rows.append(_rollout_row("vLLM direct", 1, rep, len(batch), out["tokens"], out["seconds"]))
        roles.shutdown()
    return {"prompt_tokens": prompt_len, "max_new_tokens": cfg.rollout.max_new_tokens, "rows": rows}


def _rollout_row(path: str, engines: int, rep: int, prompts: int, tokens: int, seconds: float) -> dict:
    return {"path": path, "engines": engines, "repeat": rep, "prompts": prompts, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "requests_per_s": prompts / seconds, "tokens_per_s_per_engine": tokens / seconds / engines}


class DirectVLLM:
    """vLLM's LLM with the framework's engine settings, no worker extension, no Ray in between."""

    def __init__(self, spec, rank: int, world_size: int):
        self.spec, self.rank = spec, rank

    def ready(self) -> dict:
        import os

        from rlhf_dist.dist import node_ip

        return {"role": "vllm-direct", "rank": self.rank, "ip": node_ip(), "pid": os.getpid()}

    def setup(self) -> dict:
        from vllm import LLM

        self.llm = LLM(**self.spec.llm, seed=self.spec.process.seed)
        return {"rank": self.rank}

    def run(self, prompts: list[list[int]], seed: int) -> dict:
        from vllm.inputs import TokensPrompt

        from rlhf_dist.rollout.engine import sampling_params

        params = sampling_params(self.spec.sampling, len(prompts), seed)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return {"seconds": time.perf_counter() - t0, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


class RawBroadcaster:
    """Plain torch.distributed: one default process group, one broadcast per bucket-sized chunk."""

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def endpoint(self):
        from rlhf_dist.dist import reserve_port

        return reserve_port()

    def init(self, addr: str, port: int, backend: str) -> bool:
        import torch.distributed as dist

        from rlhf_dist.dist import tcp_store, timedelta

        t = self.cfg.timeouts
        store = tcp_store(addr, port, self.world_size, self.rank == 0, timedelta(t.rendezvous_s))
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timedelta(t.collective_s))
        return True

    def broadcast(self, total_bytes: int, chunk_bytes: int, repeats: int) -> list[float]:
        import torch
        import torch.distributed as dist

        device = torch.device("cuda", 0) if dist.get_backend() == "nccl" else torch.device("cpu")
        n = total_bytes // 4
        buf = torch.zeros(n, dtype=torch.float32, device=device)
        step = max(1, chunk_bytes // 4)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            for i in range(0, n, step):
                dist.broadcast(buf[i : i + step], src=0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return times


def bench_sync(cfg: Config, bucket_mbs: list[float], repeats: int, log=print) -> dict:
    from rlhf_dist.runtime.groups import ActorGroup, worker_env
    from rlhf_dist.runtime.placement import Slot, create_pools, remove_pools
    from rlhf_dist.runtime.scaffold import ray_session
    from rlhf_dist.trainers.rl_roles import RLRoles, role_slots

    derived = derive(cfg)
    rows, verified = [], []
    cluster = None
    raw_pools: dict = {}
    # A LoRA policy synced adapter-only is measured against the full sync of the same model (its merged weights,
    # which the same LoRA-enabled engines load through vLLM's reload_weights), in this one run.
    payloads = ["adapter", "merged"] if cfg.model.lora is not None and cfg.sync.lora == "adapter" else [None]
    with ray_session(cfg, derived, log):
        try:
            cluster = RLRoles(cfg, log)
            total = 0
            version = 0
            for mb in bucket_mbs:
                for payload in payloads:
                    cluster.sync.replan(mb, payload)
                    path = "rlhf_dist sync" + (f" ({payload})" if payload else "")
                    for rep in range(repeats + 1):  # the first sync of each size is a warm-up
                        version += 2
                        # The same sync with verification (checksums on both sides), alternating, for its cost.
                        checked = cluster.sync_weights(version - 1, verify=True)
                        m = cluster.sync_weights(version, verify=False)
                        if rep:
                            verified.append({"path": path, "bucket_mb": mb, "repeat": rep, "verified_s": checked["sync/seconds"],
                                             "unverified_s": m["sync/seconds"]})
                            total = m["sync/bytes"]  # the last payload's: the full weights, with LoRA
                            rows.append({"path": path, "bucket_mb": mb, "buckets": len(cluster.sync.buckets), "repeat": rep,
                                         "MB": total / 1e6, "seconds": m["sync/seconds"], "GB_per_s": total / m["sync/seconds"] / 1e9,
                                         "gather_pack_s": m["sync/learner_gather_pack_s"], "broadcast_s": m["sync/learner_broadcast_s"],
                                         "engine_load_s": m["sync/engine_load_s"]})
            backend = cluster.sync.backend  # the raw side uses the transport the framework's sync used
            world = 1 + derived.rollout_gpus
            slots = role_slots(cfg, derived)
            # One raw rank per engine worker, each on its own bundle of the engine's slot.
            raw_slots = slots["policy"][:1] + [Slot(s.pool, (b,), s.gpu_fraction) for s in slots["rollout"] for b in s.bundles]
            cluster.shutdown()
            cluster = None
            raw_pools = create_pools(cfg.placement.pools, derived.layout, cfg.run.name, cfg.timeouts.actor_start_s)
            raw = ActorGroup("raw-broadcast", RawBroadcaster, raw_slots[:world], raw_pools, (cfg,),
                             worker_env(cfg.cluster.device, cfg.cluster.threads_per_actor))
            addr, port = raw.call("endpoint", ranks=[0], timeout_s=60)[0]
            raw.call("init", addr, port, backend, timeout_s=cfg.timeouts.rendezvous_s)
            for mb in bucket_mbs:
                times = raw.call("broadcast", total, int(mb * 2**20), repeats + 1, timeout_s=cfg.timeouts.call_s)[0][1:]
                for rep, sec in enumerate(times, 1):
                    rows.append({"path": f"raw torch.distributed ({backend})", "bucket_mb": mb, "buckets": -(-total // int(mb * 2**20)),
                                 "repeat": rep, "MB": total / 1e6, "seconds": sec, "GB_per_s": total / sec / 1e9})
            raw.kill()
        finally:
            if cluster is not None:
                cluster.shutdown()
            remove_pools(raw_pools)
    out = {"ranks": 1 + derived.rollout_gpus, "rows": rows, "verification": verification_cost(verified)}
    if payloads[0] is not None:
        out["lora"] = adapter_against_full(rows)
    return out


def adapter_against_full(rows: list[dict]) -> dict:
    """Median bytes and seconds per sync of the adapter and of the full (merged) weights, and their ratios."""
    med = {p: {k: statistics.median(r[k] for r in rows if r["path"] == f"rlhf_dist sync ({p})") for k in ("MB", "seconds")}
           for p in ("adapter", "merged")}
    return {**med, "bytes_ratio": med["merged"]["MB"] / med["adapter"]["MB"], "seconds_ratio": med["merged"]["seconds"] / med["adapter"]["seconds"]}


def verification_cost(rows: list[dict]) -> dict:
    """Median seconds of verified and unverified syncs of the same weights, and the verification's share."""
    v = statistics.median(r["verified_s"] for r in rows)
    u = statistics.median(r["unverified_s"] for r in rows)
    return {"rows": rows, "median_verified_s": v, "median_unverified_s": u, "share_of_sync": (v - u) / v}


def bench_step(cfg: Config, log=print, keep_last: bool = False) -> dict:
    """A few real steps; per-phase seconds and tokens from the run's metrics (the limits:
    rlhf_dist.commands.bench_limits). With `keep_last`, the last step's work is kept for the limits (`work`):
    its prompts and responses, and the policy's weights it started from, written to the run directory before it
    (in synchronous mode the weights its batch was generated with too)."""
    from rlhf_dist.metrics import read_metrics
    from rlhf_dist.outputs import owned_dir
    from rlhf_dist.trainers.ppo import train

    work: dict = {}

    def before_step(step: int, roles, state, run_dir: Path) -> None:
        if keep_last and step == cfg.run.steps:
            weights = owned_dir(run_dir / f"weights_before_step_{step}", run_dir)
            roles.save_policy(str(weights))
            state.tokenizer.save_pretrained(str(weights))
            work["weights"], work["step"] = str(weights), step
            state.source = KeptBatch(state.source, work)

    run_dir = train(cfg, log=log, before_step=before_step)
    rows = []
    for m in read_metrics(run_dir):
        if "timing/step" not in m:  # a row without a step: the held-out evaluation before step 1
            continue
        t = {k.removeprefix("timing/"): v for k, v in m.items() if k.startswith("timing/")}
        t.setdefault("infer", 0.0)  # absent when the step needs no pre-update pass
        compute = t["generate"] + t["infer"] + t["update"]
        rows.append({"step": m["step"], "generate": t["generate"], "score": t["score"], "infer": t["infer"],
                     "update": t["update"], "sync": t["sync"], "other": t["step"] - compute - t["score"] - t["sync"],
                     "step_s": t["step"], "outside_compute": 1 - compute / t["step"], "tokens": m["rollout/tokens"],
                     "staleness": m.get("rollout/staleness", 0.0), **overlap(t["generate"], t["infer"] + t["update"], t["step"])})
    return {"run_dir": str(run_dir), "rows": rows, "overlap": overlap_summary(rows), **({"work": work} if work else {})}


class KeptBatch:
    """The rollout source, keeping the prompts and responses of the batch it hands out (in `work`)."""

    def __init__(self, source, work: dict):
        self.source, self.work = source, work

    def take(self, step: int, timing: dict):
        rollouts = self.source.take(step, timing)
        self.work.update(prompts=rollouts.prompt_ids, responses=rollouts.response_ids)
        return rollouts

    def __getattr__(self, name):
        return getattr(self.source, name)


def overlap(generate: float, train: float, step: float) -> dict:
    """Overlap efficiency (generate + train) / step against the ideal (generate + train) / max(generate, train):
    1 when the two sides run one after the other, up to 2 when they overlap fully and take equal time."""
    eff, ideal = (generate + train) / step, (generate + train) / max(generate, train, 1e-9)
    return {"train": train, "overlap_eff": eff, "ideal_eff": ideal, "of_ideal": eff / ideal}


def overlap_summary(rows: list[dict]) -> dict:
    """Medians over the steps after the first (in asynchronous mode the first batch cannot overlap anything)."""
    later = rows[1:] or rows
    return {k: statistics.median(r[k] for r in later) for k in ("generate", "train", "step_s", "overlap_eff", "ideal_eff", "of_ideal")}
