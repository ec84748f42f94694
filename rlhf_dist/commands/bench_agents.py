"""`bench rollout` on an agent config (an `env` section): multi-turn generation where every environment step
takes a known time, three ways in one run.

- per-sample advancement: the rollout's own rounds (rlhf_dist.rollout.multiturn), each episode's next turn goes
  to the engines as soon as its environment has answered;
- per-turn batches: the same rounds, but a turn is sent only once every episode's environment has answered
  (what a loop that batches by turn does), the same seeds;
- single-turn, same tokens: one request per episode from its prompt, as many new tokens as that episode
  sampled over all its turns (end of sequence and stop strings ignored), no environment.

The known latency is a sleep before each environment step (`--tool-latency-s`, scaled 0.5x to 2x over the
episodes so some wait longer than others): a stand-in for a tool call, since a tiny random model rarely
writes a well-formed one.
"""
from __future__ import annotations

import math
import time

from rlhf_dist.config import Config, derive


def delayed(env_class: type) -> type:
    """The environment with a sleep of the row's `latency_s` before each of its steps."""

    class Delayed(env_class):
        def reset(self, row: dict):
            self.latency_s = row["latency_s"]
            return super().reset(row)

        def step(self, text: str):
            time.sleep(self.latency_s)
            return super().step(text)

    Delayed.__name__ = f"Delayed{env_class.__name__}"
    return Delayed


class Engines:
    """The engine interface run_round drives, over the benchmark's own engine group (versions unchecked)."""

    version = 0

    def __init__(self, roles, group):
        self.roles, self.group = roles, group

    def submit_generate(self, prompts, seed, sampling=None):
        from rlhf_dist.rollout.requests import submit_generate

        return submit_generate(self.group, prompts, seed, None, sampling)

    def gather_generate(self, handle) -> dict:
        from rlhf_dist.rollout.requests import merged

        return merged(self.roles.wait([handle], "rollout.generate"))


def bench_agent_rollout(cfg: Config, episodes: int, repeats: int, latency_s: float, log=print) -> dict:
    import dataclasses

    from rlhf_dist.data.prompts import load_prompts
    from rlhf_dist.dist import cpu_workers
    from rlhf_dist.preflight import prepare_model
    from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec
    from rlhf_dist.rollout.multiturn import GATHER_S, run_round
    from rlhf_dist.rollout.requests import generation_seed
    from rlhf_dist.runtime.roles import Roles, RoleSpec
    from rlhf_dist.runtime.scaffold import ray_session
    from rlhf_dist.trainers.ppo import env_spec

    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    prompts = load_prompts(cfg.data, tokenizer)
    env = env_spec(cfg, tokenizer, prompts)  # the environment loads and resets before any actor starts
    spec = dataclasses.replace(env, env_class=delayed(env.env_class))
    idx = [j % len(prompts.ids) for j in range(episodes)]
    rows = [{"prompt": prompts.texts[i], "label": None if prompts.labels is None else prompts.labels[i],
             "latency_s": latency_s * (0.5 + (j % 4) / 2)} for j, i in enumerate(idx)]
    limit = cfg.timeouts.call_s * (env.limits.max_turns + 1) + env.limits.trajectory_timeout_s
    r = cfg.placement.rollout
    specs = [RoleSpec("rollout", RolloutEngine, r.pool, r.num_engines, engine_spec(cfg), gpus_per_rank=r.tensor_parallel_size,
                      env=engine_env(cfg), seats=cpu_workers(cfg.cluster.device))]
    out = []
    with ray_session(cfg, derived, log):
        roles = Roles(specs, cfg.placement.pools, cfg.run.name, cfg.cluster, cfg.timeouts, log)
        engines = Engines(roles, roles["rollout"])
        try:
            groups = list(range(len(idx)))
            run_round(engines, spec, tokenizer, rows[:2], idx[:2], groups[:2], 0, limit)  # warm-up
            for rep in range(repeats):
                seed = generation_seed(cfg.run.seed, 1, rep + 1)
                sampled = None
                for path, gather_s in (("per-sample advancement", GATHER_S), ("per-turn batches", math.inf)):
                    t0 = time.perf_counter()
                    trajs, engine_s, metrics = run_round(engines, spec, tokenizer, rows, idx, groups, seed, limit, None, gather_s)
                    wall = time.perf_counter() - t0
                    tokens = [sum(t.loss_mask) for t in trajs]
                    sampled = sampled or (trajs, tokens)
                    out.append(_row(path, rep, len(trajs), sum(tokens), wall, engine_s, metrics))
                trajs, tokens = sampled
                asked = [(t.prompt_ids, n) for t, n in zip(trajs, tokens) if n > 0]
                settings = [{"max_tokens": n, "ignore_eos": True, "stop": [], "stop_token_ids": []} for _, n in asked]
                t0 = time.perf_counter()
                gen = engines.gather_generate(engines.submit_generate([p for p, _ in asked], seed, settings))
                wall = time.perf_counter() - t0
                got = sum(len(x) for x in gen["responses"])
                out.append(_row("single-turn, same tokens", rep, len(asked), got, wall, max(gen["engine_seconds"]), {}))
        finally:
            roles.shutdown()
    return {"episodes": episodes, "tool_latency_s": latency_s, "max_turns": env.limits.max_turns, "rows": out}


def _row(path: str, rep: int, episodes: int, tokens: int, seconds: float, engine_s: float, metrics: dict) -> dict:
    return {"path": path, "repeat": rep, "episodes": episodes, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "engine_s": engine_s, "turns_mean": metrics.get("rollout/turns_mean"),
            "env_s": metrics.get("rollout/env_seconds")}
