"""The RL loop (PPO and the critic-free family). Reads top to bottom; the math lives in rlhf_dist.algorithms."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import torch

from rlhf_dist.algorithms import kl_estimate, masked_mean
from rlhf_dist.algorithms.advantages import AdvantageInputs, estimate_advantages, informative_groups, overlong_penalty
from rlhf_dist.algorithms.correction import off_policy_terms
from rlhf_dist.algorithms.kl import kl_controller
from rlhf_dist.algorithms.losses import LOGPROB_PROBE, ClippedValueLoss, PolicyLoss
from rlhf_dist import checkpoint
from rlhf_dist.checkpoint import Checkpoint, load_trainer_state
from rlhf_dist.config import Config, derive
from rlhf_dist.console import StepProgress, step_line
from rlhf_dist.data.batch import build_batch, reward_part_metrics, rollout_batch, throughput_metrics
from rlhf_dist.data.prompts import PromptLoader, load_prompts
from rlhf_dist.errors import WaitTimeout
from rlhf_dist.rollout.evaluation import Evaluator
from rlhf_dist.config.passes import step_passes
from rlhf_dist.metrics import MetricsWriter, set_aside_metrics_after
from rlhf_dist.preflight import prepare_model
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.rollout.finish import drop_truncated
from rlhf_dist.runtime.scaffold import log_skipped, open_run, ray_session, with_restarts
from rlhf_dist.sync.weights import check_logprob_match
from rlhf_dist.trainers.async_rollout import RolloutProducer, generation_seed
from rlhf_dist.trainers.passes_run import reduce_ranks, run_passes, update_batch
from rlhf_dist.trainers.rl_roles import RLRoles


def train(cfg: Config, log=print) -> Path:
    # 1. Everything that can be checked without actors is checked first.
    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    prompts = load_prompts(cfg.data, tokenizer)
    rules = RuleRewards(cfg.reward.functions, has_labels=prompts.labels is not None)
    run = open_run(cfg, log, table=derived.table())
    run_dir, log, resume = run.dir, run.log, run.resume
    log(f"run directory: {run_dir}\nderived values:\n{derived.table()}")
    log(f"prompts: {len(prompts.texts)} from {cfg.data.prompts}")
    log_skipped(log, prompts.skipped)
    data = (prompts.ids, prompts.texts, prompts.labels, tokenizer, rules)
    evaluator = Evaluator(cfg, tokenizer, rules, log) if cfg.eval is not None else None

    with ray_session(cfg, derived, log):
        with_restarts(lambda resume: run_session(cfg, derived, run_dir, resume, data, log, evaluator), resume, run_dir,
                      cfg.fault_tolerance.max_restarts, log)
    return run_dir


def run_session(cfg: Config, derived, run_dir: Path, resume: Checkpoint | None, data, log, evaluator=None) -> None:
    """One life of the actor groups: start, optionally resume, train to the last step, save."""
    roles = writer = state = None
    try:
        roles = RLRoles(cfg, log)
        state = LoopState(cfg, *data)
        if cfg.rollout.max_staleness > 0:  # asynchronous mode: engines run ahead (rlhf_dist.trainers.async_rollout)
            state.producer = RolloutProducer(cfg, roles, state, score)
        start = 0
        if resume is not None:
            roles.load_checkpoint(str(resume.path))
            state.load_state_dict(load_trainer_state(resume))
            start = resume.step
            set_aside_metrics_after(run_dir, start)
            log(f"resumed from {resume.path} (step {start})")
        writer = MetricsWriter(run_dir, cfg.run, {**cfg.model_dump(mode="json"), "derived_table": derived.table()})
        # Version `start` pushes the learner's (possibly restored) weights to the engines and proves the path.
        log(f"initial weight sync: {roles.sync_weights(start, verify=cfg.sync.verify_every > 0)['sync/seconds']:.2f} s")
        if evaluator is not None and start == 0:
            evaluator.before_training(roles, writer, log)
        progress = StepProgress(start + 1, cfg.run.steps, cfg.run.progress_bar, log)
        for step in range(start + 1, cfg.run.steps + 1):
            metrics = rl_step(cfg, roles, state, step)
            if evaluator is not None and evaluator.due(step):
                metrics.update(evaluator.run(roles))
            writer.write(step, metrics)
            log(step_line(step, metrics))
            progress.update(step)
            every = cfg.checkpoint.every_n_steps
            if every and (step % every == 0 or step == cfg.run.steps):
                t0 = time.perf_counter()
                path = checkpoint.save(roles, state.state_dict(step), run_dir, step, cfg.checkpoint.keep_last)
                log(f"checkpoint {path} in {time.perf_counter() - t0:.1f} s")
        progress.close()
        if cfg.run.save_final:
            t0 = time.perf_counter()
            roles.save_policy(str(run_dir / "final"))
            state.tokenizer.save_pretrained(str(run_dir / "final"))
            log(f"saved HuggingFace policy to {run_dir / 'final'} in {time.perf_counter() - t0:.1f} s")
    finally:
        if writer is not None:
            writer.close()
        if state is not None and state.producer is not None:
            state.producer.close()
        if roles is not None:
            roles.shutdown()


class LoopState:
    """What the loop carries from step to step: data position, reward functions, the KL coefficient."""

    def __init__(self, cfg: Config, prompt_ids, prompt_texts, labels, tokenizer, rules):
        self.prompt_ids, self.prompt_texts, self.labels = prompt_ids, prompt_texts, labels
        self.tokenizer, self.rules = tokenizer, rules
        self.producer: RolloutProducer | None = None
        self.loader = PromptLoader(len(prompt_ids), cfg.ppo.rollout_batch_size, cfg.run.seed)
        p = cfg.ppo
        self.kl_ctl = kl_controller(p.kl_coef, p.kl_target, p.kl_horizon)
        self.passes = step_passes(cfg)
        self.policy_loss = PolicyLoss(
            name=p.policy_loss, clip_eps=p.clip_eps, clip_eps_high=p.clip_eps_high, dual_clip_c=p.dual_clip_c,
            aggregation=p.loss_aggregation, norm_constant=float(cfg.rollout.max_new_tokens),
            entropy_coef=p.entropy_coef, kl_loss_coef=p.kl_loss_coef, kl_loss_estimator=p.kl_loss_estimator,
            old_from_forward=self.passes.old_from == "first_forward",
        )

    def state_dict(self, step: int) -> dict:
        # Asynchronous mode: the position before the batches still in flight, whose prompts resume draws again.
        loader = self.producer.loader_state() if self.producer else self.loader.state_dict()
        return {"step": step, "sync_version": step, "loader": loader, "kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])


def rl_step(cfg: Config, roles: RLRoles, state: LoopState, step: int) -> dict:
    ppo = cfg.ppo
    t_step = time.perf_counter()
    timing = {}

    # 2-3a. Rollouts and their scores (with DAPO dynamic sampling, more rounds until enough groups differ).
    if state.producer is not None:
        roll, roll_metrics = state.producer.take(step, timing)
    else:
        roll, roll_metrics = collect_rollouts(cfg, roles, state, step, timing)
    batch = build_batch(roll["prompt_ids"], roll["responses"], state.tokenizer.pad_token_id)
    mask = batch["mask"]

    # 3b. Reference, critic and policy passes in parallel, only those this step needs (rlhf_dist.config.passes); scores
    # still being computed beside them are waited for after.
    engine_lp = roll["engine_logprobs"]
    out = run_passes(roles, state.passes, batch, engine_lp, timing)
    # Bounded by the reward functions' own deadlines (rlhf_dist.rewards.functions), with call_s to spare.
    scores = await_scores(roll, roll_metrics, timing, cfg.timeouts.call_s + state.rules.deadline_s(len(mask)))
    values = out.values
    staleness = roll_metrics.get("rollout/staleness", 0.0)
    if out.probe is not None and staleness == 0:
        # The engines sampled with the weights the policy just scored: their log-probs must agree.
        check_logprob_match(out.probe, cfg.sync.max_logprob_diff, step)

    # Off-policy correction of engine (behaviour) vs learner log-probs (weights None for "none"), and the mismatch
    # metrics, wherever the learner recomputed its log-probs (always so with stale batches or a correction).
    is_weights, off_metrics = None, {}
    if state.passes.old_from == "infer":
        is_weights, off_metrics = off_policy_terms(ppo.is_correction, out.old_logprobs, engine_lp, mask, ppo.is_cap, ppo.is_band)

    # 4. Advantages and returns: pure tensor math, chosen by name. Without the reference no KL is measured (and
    # none is in the rewards: kl_coef is 0 then).
    kl = kl_estimate(out.old_logprobs, out.ref_logprobs, ppo.kl_estimator) * mask if state.passes.kl_measured else None
    inputs = AdvantageInputs(
        scores=scores, mask=mask, kl=torch.zeros_like(mask, dtype=torch.float32) if kl is None else kl, kl_coef=state.kl_ctl.value,
        group_size=cfg.rollout.n_samples_per_prompt, values=values,
    )
    advantages, returns = estimate_advantages(
        ppo.advantage_estimator, inputs, gamma=ppo.gamma, lam=ppo.lam, whiten=ppo.whiten_advantages
    )

    # 5. Policy (and critic) updates, concurrently on their own ranks.
    t0 = time.perf_counter()
    if ppo.mask_truncated:
        batch["mask"] = drop_truncated(mask, roll["truncated"])
    update_batch(batch, out, engine_lp, advantages, state.policy_loss.needs_reference)
    if is_weights is not None:
        batch["is_weights"] = is_weights
    roles.threads.phase(roles.policy, roles.critic)
    updates = [roles.submit_train(roles.policy, batch, state.policy_loss, seed=step)]
    if roles.critic is not None:
        critic_batch = {**batch, "returns": returns, "old_values": values}
        updates.append(roles.submit_train(roles.critic, critic_batch, ClippedValueLoss(ppo.value_clip_eps), seed=step))
    results = roles.wait(updates, f"policy update (step {step})")
    n_policy = len(roles.policy)
    timing["update"] = time.perf_counter() - t0
    policy_metrics = reduce_ranks(results[:n_policy])
    if out.probe is None:  # measured by the update's first forward
        check_logprob_match(policy_metrics[LOGPROB_PROBE], cfg.sync.max_logprob_diff, step)

    # 6. New weights to the engines, verified every `verify_every` syncs.
    verify = cfg.sync.verify_every > 0 and step % cfg.sync.verify_every == 0
    sync = roles.sync_weights(step, verify)
    timing["sync"] = sync["sync/seconds"]
    timing["step"] = time.perf_counter() - t_step

    # 7. Metrics; the adaptive KL controller moves after the step.
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        "kl/coef": state.kl_ctl.value,
        "advantages/mean": float(masked_mean(advantages, mask)),
        "returns/mean": float(masked_mean(returns, mask)),
        "response/length_mean": float(mask.sum(1).mean()),
        "rollout/staleness": staleness,
        **off_metrics,
        **roll_metrics,
    }
    if out.probe is not None:
        metrics[LOGPROB_PROBE] = out.probe
    if values is not None:
        metrics["values/mean"] = float(masked_mean(values, mask))
    if kl is not None:  # no KL metric when it was not computed
        kl_mean = float(masked_mean(kl, mask, dim=1).mean())
        metrics.update({"kl/mean": kl_mean, "kl/sum_mean": float(kl.sum(1).mean())})
        state.kl_ctl.update(kl_mean, len(scores))
    metrics.update(policy_metrics)
    if len(results) > n_policy:
        metrics.update(reduce_ranks(results[n_policy:]))
    metrics.update(sync)
    metrics.update({f"timing/{k}": v for k, v in timing.items()})
    return metrics


def collect_rollouts(cfg: Config, roles: RLRoles, state: LoopState, step: int, timing: dict) -> tuple[dict, dict]:
    """Generate and score `rollout_batch_size` prompt groups. With dynamic sampling, groups whose samples all
    score the same are dropped and more prompts are drawn, up to `max_sampling_rounds` rounds; if still short,
    the batch is filled with dropped groups and the shortfall is reported in the metrics."""
    ppo, n = cfg.ppo, cfg.rollout.n_samples_per_prompt
    want = ppo.rollout_batch_size
    if not ppo.dynamic_sampling and roles.reward is None:
        return rollouts_scored_beside(cfg, roles, state, step, timing)
    kept, spare = [], []
    gen_s = score_s = 0.0
    tokens = 0
    rounds = 0
    while len(kept) < want and rounds < (ppo.max_sampling_rounds if ppo.dynamic_sampling else 1):
        rounds += 1
        idx, gen, seconds = generate_round(cfg, roles, state, step, rounds)
        gen_s += seconds
        tokens += sum(len(r) for r in gen["responses"])
        t0 = time.perf_counter()
        scores, parts = score(cfg, roles, state, idx, gen["responses"])
        score_s += time.perf_counter() - t0
        groups = [
            {"idx": idx[g * n : (g + 1) * n], "responses": gen["responses"][g * n : (g + 1) * n],
             "logprobs": gen["logprobs"][g * n : (g + 1) * n], "scores": scores[g * n : (g + 1) * n],
             "finish": gen["finish_reasons"][g * n : (g + 1) * n],
             "parts": {k: v[g * n : (g + 1) * n] for k, v in parts.items()}}
            for g in range(len(idx) // n)
        ]
        if ppo.dynamic_sampling:
            useful = informative_groups(scores, n).tolist()
            kept += [g for g, u in zip(groups, useful) if u]
            spare += [g for g, u in zip(groups, useful) if not u]
        else:
            kept += groups
    filled = max(0, want - len(kept))
    chosen = (kept + spare)[:want]
    timing["generate"], timing["score"] = gen_s, score_s
    roll, metrics = rollout_batch(
        state.prompt_ids, [i for g in chosen for i in g["idx"]], [r for g in chosen for r in g["responses"]],
        [lp for g in chosen for lp in g["logprobs"]], [f for g in chosen for f in g["finish"]],
        torch.cat([g["scores"] for g in chosen]), n,
    )
    metrics.update(throughput_metrics(tokens, gen_s))
    metrics.update(reward_part_metrics({name: torch.cat([g["parts"][name] for g in chosen]) for name in chosen[0]["parts"]}))
    if ppo.dynamic_sampling:
        metrics.update({"dynamic_sampling/rounds": rounds, "dynamic_sampling/filled_with_uninformative": filled})
    return roll, metrics


def rollouts_scored_beside(cfg: Config, roles: RLRoles, state: LoopState, step: int, timing: dict) -> tuple[dict, dict]:
    """One round whose every group is trained: the scores are not needed before the update, so rule rewards
    (worker processes, rlhf_dist.rewards.pool) run on a helper thread while the step's passes run; a reward
    model is left out (its actors would share the passes' cores and threads)."""
    idx, gen, timing["generate"] = generate_round(cfg, roles, state, step, 1)
    roll, metrics = rollout_batch(state.prompt_ids, idx, gen["responses"], gen["logprobs"], gen["finish_reasons"], None,
                                  cfg.rollout.n_samples_per_prompt)
    roll["scores"] = in_background(score, cfg, roles, state, idx, gen["responses"])
    metrics.update(throughput_metrics(sum(len(r) for r in gen["responses"]), timing["generate"]))
    return roll, metrics


def generate_round(cfg: Config, roles: RLRoles, state: LoopState, step: int, round_: int) -> tuple[list[int], dict, float]:
    """The next prompts, each n_samples_per_prompt times in a row (the grouping contract), generated: (the
    prompt of each sample, the engines' answers, seconds)."""
    idx = [i for i in state.loader.next_batch() for _ in range(cfg.rollout.n_samples_per_prompt)]
    t0 = time.perf_counter()
    gen = roles.generate([state.prompt_ids[i] for i in idx], seed=generation_seed(cfg.run.seed, step, round_))
    return idx, gen, time.perf_counter() - t0


def await_scores(roll: dict, metrics: dict, timing: dict, limit_s: float) -> torch.Tensor:
    """The step's scores. Those computed beside the passes are waited for here: timing/score is the wait the
    step saw, timing/score_beside the scoring's own seconds."""
    pending = roll["scores"]
    if not isinstance(pending, Future):
        return pending
    t0 = time.perf_counter()
    try:
        (scores, parts), busy = pending.result(timeout=limit_s)
    except FutureTimeout:
        raise WaitTimeout(f"scoring the step's samples: not done in {limit_s:g} s (the reward functions' deadlines plus timeouts.call_s)") from None
    timing["score"], timing["score_beside"] = time.perf_counter() - t0, busy
    metrics.update(reward_part_metrics(parts))
    roll["scores"] = scores
    return scores


def in_background(fn, *args) -> Future:
    """fn(*args) on a daemon thread (a reward call stuck until its deadline never holds the process at exit)."""
    fut: Future = Future()

    def run():
        t0 = time.perf_counter()
        try:
            fut.set_result((fn(*args), time.perf_counter() - t0))
        except BaseException as e:  # noqa: BLE001 - raised again by the waiter
            fut.set_exception(e)

    threading.Thread(target=run, name="scoring", daemon=True).start()
    return fut


def score(cfg: Config, roles: RLRoles, state: LoopState, idx: list[int], responses: list[list[int]]):
    """Rule functions + weighted reward model + optional overlong penalty: (scores [N], unweighted parts)."""
    texts = state.tokenizer.batch_decode(responses, skip_special_tokens=True)
    prompts = [state.prompt_texts[i] for i in idx]
    labels = None if state.labels is None else [state.labels[i] for i in idx]
    scores = torch.zeros(len(idx), dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    if state.rules:
        table = torch.tensor(state.rules.per_function(prompts, texts, labels), dtype=torch.float32)
        scores += table.sum(1)
        for j, (name, spec) in enumerate(zip(state.rules.names, state.rules.specs)):
            parts[name] = table[:, j] / spec.weight if spec.weight else table[:, j]
    if roles.reward is not None:
        rm = torch.tensor(roles.reward_scores(list(zip(prompts, texts))), dtype=torch.float32)
        scores += cfg.reward.model_weight * rm
        parts["reward_model"] = rm
    if cfg.ppo.overlong_buffer is not None:
        lengths = torch.tensor([len(r) for r in responses])
        penalty = overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.ppo.overlong_buffer, cfg.ppo.overlong_penalty).float()
        scores += penalty
        parts["overlong_penalty"] = penalty
    return scores, parts


