"""PPO: the top-level loop. Reads top to bottom; the math lives in rlhf_dist.algorithms."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from rlhf_dist.algorithms import compute_gae, kl_estimate, masked_mean, masked_whiten, shape_token_rewards
from rlhf_dist.algorithms.losses import ClippedValueLoss, PPOPolicyLoss
from rlhf_dist.cluster import Cluster, init_ray
from rlhf_dist.config import Config, derive, to_yaml
from rlhf_dist.data.batch import build_batch, pad_rows
from rlhf_dist.data.prompts import PromptLoader, read_prompts, tokenize_prompts
from rlhf_dist.errors import wait_all
from rlhf_dist.metrics import MetricsWriter, fresh_run_dir
from rlhf_dist.preflight import prepare_model
from rlhf_dist.rewards.functions import RuleRewards


def train(cfg: Config, log=print) -> Path:
    # 1. Everything that can be checked without actors is checked first.
    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    prompt_texts = read_prompts(cfg.data)
    prompt_ids = tokenize_prompts(prompt_texts, tokenizer, cfg.data, cfg.data.prompts)
    rules = RuleRewards(cfg.reward.functions)
    run_dir = fresh_run_dir(cfg.run.output_dir)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log(f"run directory: {run_dir}\nderived values:\n{derived.table()}")

    started_ray = init_ray(cfg, derived, log)
    cluster = None
    writer = MetricsWriter(run_dir, cfg.run.tensorboard)
    try:
        cluster = Cluster(cfg, derived, log)
        # Version 0 proves the sync path (and that engines serve the learner's weights) before step 1.
        log(f"initial weight sync: {cluster.sync_weights(0, verify=cfg.sync.verify_every > 0)['sync/seconds']:.2f} s")
        loader = PromptLoader(len(prompt_ids), cfg.ppo.rollout_batch_size, cfg.run.seed)
        steps = range(1, cfg.run.steps + 1)
        bar = _progress(steps, cfg.run.progress_bar)
        for step in bar:
            metrics = ppo_step(cfg, cluster, loader, prompt_ids, prompt_texts, tokenizer, rules, step)
            writer.write(step, metrics)
            _show(bar, log, step, metrics)
        if cfg.run.save_final:
            t0 = time.perf_counter()
            cluster.save_policy(str(run_dir / "final"))
            tokenizer.save_pretrained(str(run_dir / "final"))
            log(f"saved HuggingFace policy to {run_dir / 'final'} in {time.perf_counter() - t0:.1f} s")
    finally:
        writer.close()
        if cluster is not None:
            cluster.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    return run_dir


def ppo_step(cfg: Config, cluster: Cluster, loader, prompt_ids, prompt_texts, tokenizer, rules, step: int) -> dict:
    ppo, n = cfg.ppo, cfg.rollout.n_samples_per_prompt
    t_step = time.perf_counter()
    timing = {}

    # 2. Rollouts: each prompt n times, spread over the engines.
    idx = [i for i in loader.next_batch() for _ in range(n)]
    t0 = time.perf_counter()
    gen = cluster.generate([prompt_ids[i] for i in idx], seed=cfg.run.seed * 1_000_003 + step * 10_007)
    timing["generate"] = time.perf_counter() - t0
    batch = build_batch([prompt_ids[i] for i in idx], gen["responses"], tokenizer.pad_token_id)
    mask = batch["mask"]
    engine_logprobs = pad_rows(gen["logprobs"], mask.shape[1])

    # 3. Scores (reward model and/or rules), then reference, critic and policy passes, all in parallel.
    t0 = time.perf_counter()
    infer = {
        "reference": cluster.submit_infer(cluster.reference, batch),
        "critic": cluster.submit_infer(cluster.critic, batch),
        "policy": cluster.submit_infer(cluster.policy, batch),
    }
    responses = tokenizer.batch_decode(gen["responses"], skip_special_tokens=True)
    prompts = [prompt_texts[i] for i in idx]
    scores = torch.zeros(len(idx))
    if rules:
        scores += torch.tensor(rules(prompts, responses))
    if cluster.reward is not None:
        scores += cfg.reward.model_weight * torch.tensor(cluster.reward_scores([p + r for p, r in zip(prompts, responses)]))
    timing["score"] = time.perf_counter() - t0
    ref_lp = cluster.gather_infer(infer["reference"], "reference log-probs")["logprobs"]
    values = cluster.gather_infer(infer["critic"], "critic values")["values"]
    old_lp = cluster.gather_infer(infer["policy"], "policy log-probs")["logprobs"]
    timing["infer"] = time.perf_counter() - t0 - timing["score"]

    # 4. KL-shaped rewards, advantages, returns: pure tensor math.
    kl = kl_estimate(old_lp, ref_lp, ppo.kl_estimator) * mask
    token_rewards = shape_token_rewards(scores, kl, mask, ppo.kl_coef)
    advantages, returns = compute_gae(token_rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = masked_whiten(advantages, mask)

    # 5. Policy and critic updates, concurrently on their own ranks.
    t0 = time.perf_counter()
    batch.update(old_logprobs=old_lp, advantages=advantages, returns=returns, old_values=values)
    refs_p, lab_p = cluster.submit_train(cluster.policy, batch, PPOPolicyLoss(ppo.clip_eps, ppo.entropy_coef), seed=step)
    refs_c, lab_c = cluster.submit_train(cluster.critic, batch, ClippedValueLoss(ppo.value_clip_eps), seed=step)
    results = wait_all(refs_p + refs_c, lab_p + lab_c, f"PPO update (step {step})", cfg.timeouts.call_s)
    timing["update"] = time.perf_counter() - t0

    # 6. New weights to the engines, verified every `verify_every` syncs.
    verify = cfg.sync.verify_every > 0 and step % cfg.sync.verify_every == 0
    sync = cluster.sync_weights(step, verify)
    timing["sync"] = sync["sync/seconds"]
    timing["step"] = time.perf_counter() - t_step

    # 7. Metrics.
    n_tokens = float(mask.sum())
    lengths = mask.sum(1)
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        "kl/mean": float(masked_mean(kl, mask, dim=1).mean()),
        "kl/sum_mean": float(kl.sum(1).mean()),
        "advantages/mean": float(masked_mean(advantages, mask)),
        "returns/mean": float(masked_mean(returns, mask)),
        "values/mean": float(masked_mean(values, mask)),
        "response/length_mean": float(lengths.mean()),
        "rollout/tokens": n_tokens,
        "rollout/tokens_per_s": n_tokens / max(timing["generate"], 1e-9),
        "rollout/engine_learner_logprob_diff_max": float(((engine_logprobs - old_lp).abs() * mask).max()),
    }
    metrics.update(_mean(results[: len(refs_p)]))
    metrics.update(_mean(results[len(refs_p) :]))
    metrics.update(sync)
    metrics.update({f"timing/{k}": v for k, v in timing.items()})
    return metrics


def _mean(rows: list[dict]) -> dict:
    """Average each metric over the ranks of one group."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def _progress(steps, enabled: bool):
    if not enabled:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="ppo", unit="step", dynamic_ncols=True)


def _show(bar, log, step: int, m: dict) -> None:
    text = (
        f"reward {m['reward/mean']:.3f} kl {m['kl/mean']:.4f} len {m['response/length_mean']:.1f} "
        f"step {m['timing/step']:.1f}s sync {m['sync/seconds']:.2f}s"
    )
    if hasattr(bar, "set_postfix_str"):
        bar.set_postfix_str(text)
        bar.write(f"step {step}: {text}")
    else:
        log(f"step {step}: {text}")
