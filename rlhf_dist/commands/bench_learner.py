"""`rlhf-dist bench learner`: the policy's learner ranks on one batch whose response lengths vary widely (from one
token to rollout.max_new_tokens, log-uniform, as RL produces), three ways in the same run, alternating:

- padded: micro-batches of ppo.micro_batch_size samples padded to the batch's longest prompt and response (what a
  run without ppo.micro_batch_tokens and ppo.packing does);
- padded, token budget: micro-batches by token budget, each padded to its own widest prompt and response;
- packed, token budget: the same budget, samples packed end to end into rows (docs/packing.md).

The budget is ppo.micro_batch_tokens, or, unset, the positions one padded micro-batch holds (micro_batch_size x
(max_prompt_tokens + max_new_tokens)), so every way holds at most as many positions per forward. Each way runs the
update (epochs x mini-batches, DeepSpeed steps, the policy loss) and the log-prob pass; a row gives real tokens
per second and the share of the computed positions that were padding.
"""
from __future__ import annotations

import math
import random
import statistics
import time

import torch

from rlhf_dist.config import Config, derive

COLUMNS = ["way", "pass", "repeat", "tokens", "positions", "padding_fraction", "seconds", "tokens_per_s"]


def workload(cfg: Config, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A step's worth of samples: prompts of max_prompt_tokens/4 to max_prompt_tokens tokens, responses of 1 to
    max_new_tokens tokens drawn log-uniformly (most short, a few at the limit), random advantages."""
    from rlhf_dist.data.batch import build_batch

    rng = random.Random(seed)
    n = derive(cfg).samples_per_step
    top_p, top_r = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(max(1, top_p // 4), top_p))] for _ in range(n)]
    responses = [[rng.randrange(10, vocab) for _ in range(round(math.exp(rng.uniform(0, math.log(top_r)))))] for _ in range(n)]
    batch = build_batch(prompts, responses, pad_id=0)
    batch["advantages"] = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(seed)) * batch["mask"]
    return batch


def ways(cfg: Config, batch: dict, loss_fn, ranks: int, seed: int) -> dict[str, tuple[list, list]]:
    """way -> (update plans, pass plans) per rank."""
    from rlhf_dist.data import packing

    p = cfg.ppo
    budget = p.micro_batch_tokens or p.micro_batch_size * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
    n = batch["input_ids"].shape[0]
    out = {f"padded, {p.micro_batch_size} samples": (
        packing.count_update_plan(n, ranks, p.mini_batch_size, p.micro_batch_size, p.epochs, seed, packed=False),
        packing.count_infer_plan(n, ranks, p.micro_batch_size, packed=False))}
    for packed in (False, True):
        out[f"{'packed' if packed else 'padded'}, {budget} tokens"] = (
            packing.plan_update(batch, loss_fn, ranks, p.mini_batch_size, p.micro_batch_size, p.epochs, budget, packed, seed),
            packing.plan_infer(batch, ranks, p.micro_batch_size, budget, packed))
    return out


def bench_learner(cfg: Config, repeats: int, log=print) -> dict:
    from transformers import AutoConfig

    from rlhf_dist.algorithms.losses import PolicyLoss
    from rlhf_dist.data.packing import rank_shards
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.preflight import prepare_model
    from rlhf_dist.runtime.roles import Roles, RoleSpec
    from rlhf_dist.runtime.scaffold import ray_session
    from rlhf_dist.trainers.rl_roles import learner_spec

    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    batch = workload(cfg, min(len(tokenizer), AutoConfig.from_pretrained(cfg.model.policy).vocab_size))
    loss_fn = PolicyLoss(name=cfg.ppo.policy_loss, clip_eps_high=cfg.ppo.clip_eps_high, aggregation=cfg.ppo.loss_aggregation,
                         norm_constant=float(cfg.rollout.max_new_tokens), old_from_forward=True)
    pl = cfg.placement.policy
    role = RoleSpec("policy", PolicyWorker, pl.pool, pl.num_gpus, learner_spec(cfg, "policy"), rendezvous=True)
    rows = []
    with ray_session(cfg, derived, log):
        roles = Roles([role], cfg.placement.pools, cfg.run.name, cfg.cluster, cfg.timeouts, log)
        try:
            group = roles["policy"]
            plans = ways(cfg, batch, loss_fn, len(group), cfg.run.seed)
            shards = {way: (rank_shards(batch, up), rank_shards(batch, inf)) for way, (up, inf) in plans.items()}

            def run(way: str, what: str) -> dict:
                (up, inf), (up_s, inf_s) = plans[way], shards[way]
                t0 = time.perf_counter()
                if what == "update":
                    args = [(s, loss_fn, cfg.run.seed, p) for s, p in zip(up_s, up)]
                    metrics = roles.wait([group.submit("train", per_rank=args)], f"bench learner: update, {way}")
                    seconds = time.perf_counter() - t0
                    real = cfg.ppo.epochs * int(batch["attention_mask"].sum())
                    pad = statistics.mean(m["policy/padding_fraction"] for m in metrics)
                    return {"tokens": real, "positions": round(real / (1 - pad)), "padding_fraction": pad, "seconds": seconds}
                roles.wait([group.submit("infer", per_rank=list(zip(inf_s, inf)))], f"bench learner: pass, {way}")
                seconds = time.perf_counter() - t0
                counts = roles.call("policy", "pop_positions")
                real, computed = sum(c[0] for c in counts), sum(c[1] for c in counts)
                return {"tokens": real, "positions": computed, "padding_fraction": 1 - real / computed, "seconds": seconds}

            for way in plans:  # warm-up: each way's first calls
                run(way, "update"), run(way, "infer")
            # Timings drift on a shared machine: the ways alternate within each repeat.
            for rep in range(repeats):
                for way in plans:
                    for what in ("update", "infer"):
                        r = run(way, what)
                        r["tokens_per_s"] = r["tokens"] / r["seconds"]
                        rows.append({"way": way, "pass": what, "repeat": rep, **r})
                        log(f"{what} {way}: {r['tokens_per_s']:.0f} tokens/s, padding {r['padding_fraction']:.1%}")
        finally:
            roles.shutdown()
    return {"samples": batch["input_ids"].shape[0], "response_lengths": batch["attention_mask"][:, -batch["mask"].shape[1]:].sum(1).tolist(),
            "rows": rows, "speedup": speedups(rows)}


def speedups(rows: list[dict]) -> list[dict]:
    """Median tokens/s of each way and pass, and its ratio to the padded way by count."""
    med: dict[tuple[str, str], float] = {}
    for key in {(r["pass"], r["way"]) for r in rows}:
        med[key] = statistics.median(r["tokens_per_s"] for r in rows if (r["pass"], r["way"]) == key)
    pads = {(r["pass"], r["way"]): r["padding_fraction"] for r in rows}
    base = {what: next(v for (w, way), v in med.items() if w == what and way.endswith("samples")) for what, _ in med}
    order = list(dict.fromkeys(r["way"] for r in rows))
    return [{"pass": what, "way": way, "median_tokens_per_s": med[(what, way)], "padding_fraction": pads[(what, way)],
             "vs_padded": med[(what, way)] / base[what]} for what in ("update", "infer") for way in order if (what, way) in med]
