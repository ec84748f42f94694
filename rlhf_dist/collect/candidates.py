"""`rlhf-dist collect candidates`: K responses per prompt from a policy, through the vLLM engines and the
rollout source's `generate` (as labelling and evaluation sample), written as RUN_DIR/candidates.jsonl."""
from __future__ import annotations

import time
from pathlib import Path

from rlhf_dist.collect.items import Item, item_line
from rlhf_dist.config.collect import CandidatesConfig
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.data.prompts import load_prompts
from rlhf_dist.dist import cpu_workers
from rlhf_dist.model_shape import check_tp_heads
from rlhf_dist.outputs import open_append
from rlhf_dist.preflight import check_stop_tokens, prepare_tokenizer
from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec
from rlhf_dist.rollout.requests import generation_seed
from rlhf_dist.rollout.source import generate
from rlhf_dist.runtime.roles import RoleSpec, role_gpus
from rlhf_dist.runtime.scaffold import log_skipped, open_run, ray_session
from rlhf_dist.trainers.label import LabelRoles


def make_candidates(cfg: CandidatesConfig, log=print, source: str | None = None) -> Path:
    """`source`: what the user named, when model.policy is a directory made from it (an exported checkpoint)."""
    m, n = cfg.model, cfg.rollout.n_samples_per_prompt
    tokenizer = prepare_tokenizer("model.policy", m.policy, m.make_tiny, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
                                  "data.max_prompt_tokens + rollout.max_new_tokens", log, who="policy")
    check_tp_heads(cfg.placement.rollout.tensor_parallel_size, m.policy)
    check_stop_tokens(cfg.rollout.stop_token_ids, tokenizer, m.policy)
    prompts = load_prompts(cfg.data, tokenizer)
    run = open_run(cfg, log, resumable=False)
    log, out = run.log, run.dir / "candidates.jsonl"
    log_skipped(log, prompts.skipped)
    log(f"candidates: {len(prompts.texts)} prompts x {n} responses from {source or m.policy}; writing {out}")
    p = cfg.placement
    specs = [RoleSpec("rollout", RolloutEngine, p.rollout.pool, p.rollout.num_engines, engine_spec(cfg),
                      gpus_per_rank=p.rollout.tensor_parallel_size, env=engine_env(cfg), seats=cpu_workers(cfg.cluster.device))]
    with ray_session(cfg, pool_layout(p.pools, role_gpus(specs)), log):
        roles = LabelRoles(cfg, specs, log)
        try:
            t0 = time.perf_counter()
            with open_append(out) as f:  # a fresh run directory: a new file
                for b, start in enumerate(range(0, len(prompts.texts), cfg.batch_size)):
                    idx = list(range(start, min(start + cfg.batch_size, len(prompts.texts))))
                    samples, _, _ = generate(roles, prompts, idx, n, generation_seed(cfg.run.seed, b + 1, 1))
                    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
                    for k, i in enumerate(idx):
                        # Ids carry the run directory's name, so candidates of later rounds join the same store.
                        f.write(item_line(Item(f"{run.dir.name}:{i + 1:05d}", prompts.texts[i], tuple(texts[k * n : (k + 1) * n]))))
                    log(f"sampled {idx[-1] + 1}/{len(prompts.texts)} prompts ({time.perf_counter() - t0:.1f} s)")
        finally:
            roles.shutdown()
    log(f"wrote {len(prompts.texts)} items of {n} responses to {out}")
    return run.dir
