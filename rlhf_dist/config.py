"""Typed configuration: YAML + dotted CLI overrides (rlhf_dist.config_io), validated once, derived values
computed in one place.

The validated config is frozen; workers receive narrow specs built from it (rlhf_dist.specs), never the config.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, names
from rlhf_dist.config_extra import (  # noqa: F401 - re-exported
    CheckpointConfig,
    ClusterConfig,
    EvalConfig,
    InputFile,
    Job,
    LRSchedule,
    OutputDir,
    PathKind,
    ResumableJob,
    RunOutput,
    Strict,
    TimeoutConfig,
)
from rlhf_dist.config_io import (  # noqa: F401 - re-exported: callers import them from here
    apply_overrides,
    format_validation_error,
    parse_override,
    read_config_data,
    to_yaml,
    validate,
)
from rlhf_dist.errors import ConfigError
from rlhf_dist.layout import PoolLayout, pool_layout
from rlhf_dist.passes import uses_reference


class RunConfig(RunOutput):
    steps: int = Field(10, ge=1)
    save_final: bool = True


class ModelConfig(Strict):
    policy: str  # local directory (or hub id) of the SFT/initial policy, HF format
    make_tiny: bool = False  # create a tiny random model + tokenizer at `policy` if the directory is missing
    critic: str | None = None  # defaults to the policy weights (value head freshly initialised)
    reference: str | None = None  # defaults to the policy weights
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False


class DataConfig(Strict):
    prompts: InputFile  # JSONL file, one object per line
    prompt_key: str = "prompt"
    label_key: str | None = None  # a field passed to reward functions as `label` (e.g. the reference answer)
    apply_chat_template: bool = False
    max_prompt_tokens: int = Field(64, ge=1)
    # Bad lines (malformed JSON, missing fields, non-UTF-8, too long) stop the run with file:line, or, when
    # true, are skipped and counted in the log (never silently).
    skip_bad_lines: bool = False


class RolloutConfig(Strict):
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0: off
    min_p: float = Field(0.0, ge=0, le=1)  # 0: off
    stop: list[str] = Field(default_factory=list)  # strings that end a response (kept in its tokens)
    stop_token_ids: list[int] = Field(default_factory=list)  # token ids that end a response, besides EOS
    n_samples_per_prompt: int = Field(1, ge=1)
    kv_cache_gb: int = Field(1, ge=1)  # CPU only: KV cache size per engine
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # GPU only
    enforce_eager: bool = True
    # Asynchronous mode: engines generate up to k weight versions ahead of the learners (0: on-policy, in step).
    max_staleness: int = Field(0, ge=0)
    warmup: bool = True  # engines generate one step's share of random prompts at set-up, beside the learners' start


class RewardFunction(Strict):
    name: str  # "package.module:function", called as fn(prompt: str, response: str, **kwargs) -> float
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(60, gt=0)  # per call; a batch waits timeout_s x the calls its busiest process runs, never 0
    retries: int = Field(0, ge=0)
    concurrency: int = Field(8, ge=1)  # calls in flight at once: worker processes (rewards/pool.py)


class RewardConfig(Strict):
    model: str | None = None  # HF sequence-classification model (score at the last token)
    model_weight: float = 1.0
    # Standardise the reward model's scores with the mean and std `rlhf-dist rm` measured on held-out pairs
    # (reward_stats.json beside the model), so model_weight and KL coefficients mean the same for any RM.
    model_normalize: bool = False
    functions: list[RewardFunction] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_reward(self):
        if self.model is None and not self.functions:
            raise ValueError("set reward.model and/or reward.functions: there is nothing to score rollouts with")
        for f in self.functions:
            module, colon, attr = f.name.partition(":")
            if not (colon and module.strip() and attr.strip()):
                raise ValueError(f"reward.functions name {f.name!r} must look like 'package.module:function'")
        return self


class PPOConfig(Strict):
    """The RL algorithm: batch sizes, advantage estimator, policy loss, KL handling, optimiser."""

    rollout_batch_size: int = Field(8, ge=1)  # prompts per step
    mini_batch_size: int = Field(8, ge=1)  # samples per optimizer step, across all data-parallel ranks
    micro_batch_size: int = Field(4, ge=1)  # samples per forward/backward on one rank
    epochs: int = Field(1, ge=1)  # passes over each step's samples
    advantage_estimator: names(ADVANTAGE_ESTIMATORS) = "gae"
    policy_loss: names(POLICY_LOSSES) = "ppo"
    loss_aggregation: names(AGGREGATIONS) = "token_mean"
    clip_eps: float = Field(0.2, gt=0)  # lower clip (and upper, unless clip_eps_high is set)
    clip_eps_high: float | None = Field(None, gt=0)  # DAPO clip-higher
    dual_clip_c: float = Field(3.0, gt=1)
    value_clip_eps: float = Field(0.2, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.0, ge=0)  # KL penalty put in the per-token rewards (gae, reinforce_pp*)
    kl_estimator: names(KL_ESTIMATORS) = "k1"
    kl_target: float | None = Field(None, gt=0)  # adaptive kl_coef toward this per-token KL; None: fixed
    kl_horizon: int = Field(10000, ge=1)
    kl_loss_coef: float = Field(0.0, ge=0)  # KL to the reference as a loss term (GRPO style)
    kl_loss_estimator: names(KL_ESTIMATORS) = "k3"
    log_kl: bool = False  # run the reference for the KL metric even when no KL term uses it
    # Old log-probs: the learner's (recomputed, or its first forward's in a single on-policy update) or the engine's
    old_logprobs: Literal["learner", "engine"] = "learner"
    whiten_advantages: bool = True  # gae only; the others normalise as their definition says
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False  # DAPO: drop prompt groups whose scores are all equal, refill
    max_sampling_rounds: int = Field(4, ge=1)
    overlong_buffer: int | None = Field(None, ge=1)  # DAPO soft overlong penalty over the last N tokens
    overlong_penalty: float = Field(1.0, ge=0)
    mask_truncated: bool = False  # DAPO overlong filtering: responses cut at max_new_tokens get no loss
    # Engine-vs-learner importance-sampling correction (rlhf_dist.algorithms.correction): cap for *_tis, band for *_mask.
    is_correction: names(CORRECTIONS) = "none"
    is_cap: float = Field(2.0, gt=1)
    is_band: tuple[float, float] = (0.5, 2.0)
    policy_lr: float = Field(1e-5, gt=0)
    critic_lr: float = Field(1e-5, gt=0)
    lr_schedule: LRSchedule = LRSchedule()  # policy and critic; warmup counted in PPO steps
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class PoolConfig(Strict):
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class LearnerRole(Strict):
    pool: str
    num_gpus: int = Field(1, ge=1)  # one data-parallel rank per GPU
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = False  # ZeRO optimizer (and, at stage 3, parameter) offload to CPU


class InferenceRole(Strict):
    pool: str
    num_gpus: int = Field(1, ge=1)  # one data-parallel rank per GPU
    # 0: a full replica per rank; 3 (reference only): weights partitioned over the ranks with DeepSpeed ZeRO-3,
    # gathered layer by layer in the forward pass, for models too large for one GPU.
    zero_stage: Literal[0, 3] = 0


class RolloutRole(Strict):
    pool: str
    num_engines: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)


class PlacementConfig(Strict):
    pools: dict[str, PoolConfig]
    policy: LearnerRole
    critic: LearnerRole | None = None  # needed only by estimators with a critic (gae)
    reference: InferenceRole
    reward: InferenceRole | None = None  # needed only when reward.model is set
    rollout: RolloutRole
    # Learner-side ranks on one bundle (policy, critic, a replicated reference and reward model; never ZeRO-3,
    # never the engines) share one process, whose calls then run one after another (rlhf_dist/runtime/hosts.py).
    share_processes: bool = False


class SyncConfig(Strict):
    bucket_mb: float = Field(64, gt=0)
    verify_every: int = Field(1, ge=0)  # hash-check engines against the learner every N syncs; 0 = off
    # Stop the run when the engines' log-probs of their sampled tokens differ from the learner's by more than this
    # (the probe `rollout/engine_learner_logprob_diff_max`, every step); None: reported only.
    max_logprob_diff: float | None = Field(None, gt=0)
    # How engines load synced weights. auto: unquantized eager Llama/Qwen2 CPU models through
    # rlhf_dist.sync.cpu_reload (vLLM's general reload bookkeeping skipped, same engine outputs), everything else
    # through vLLM's reload_weights; vllm_reload: always vLLM's (what GPU engines run; CPU tests run it too).
    engine_load: Literal["auto", "vllm_reload"] = "auto"


class FaultToleranceConfig(Strict):
    # After a worker dies: restart all actor groups and resume from the last checkpoint, at most this often.
    max_restarts: int = Field(0, ge=0)


class Config(ResumableJob):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig
    ppo: PPOConfig = PPOConfig()
    placement: PlacementConfig
    sync: SyncConfig = SyncConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    eval: EvalConfig | None = None

    @model_validator(mode="after")
    def _restarts_need_checkpoints(self):
        if self.fault_tolerance.max_restarts and not self.checkpoint.every_n_steps:
            raise ValueError(
                "fault_tolerance.max_restarts: restarts resume from the last checkpoint; set checkpoint.every_n_steps"
            )
        return self


@dataclasses.dataclass(frozen=True)
class Derived:
    """Every value computed from the config, in one place, printed at start."""

    samples_per_step: int
    policy_ranks: int
    critic_ranks: int
    samples_per_policy_rank: int
    grad_accum_policy: int
    grad_accum_critic: int
    optimizer_steps_per_step: int
    rollout_gpus: int
    layout: PoolLayout  # pools -> roles and reserved GPUs (rlhf_dist.layout, shared with every command)

    @property
    def gpus_per_pool(self) -> dict[str, int]:
        return self.layout.gpus_per_pool

    @property
    def roles_per_pool(self) -> dict[str, list[str]]:
        return self.layout.roles_per_pool

    @property
    def total_gpus(self) -> int:
        return self.layout.total_gpus

    def table(self) -> str:
        rows = [
            ("samples per step (prompts x samples/prompt)", self.samples_per_step),
            ("policy ranks / critic ranks", f"{self.policy_ranks} / {self.critic_ranks or 'none (critic-free)'}"),
            ("samples per policy rank per step", self.samples_per_policy_rank),
            ("grad accumulation (policy / critic)", f"{self.grad_accum_policy} / {self.grad_accum_critic}"),
            ("optimizer steps per PPO step", self.optimizer_steps_per_step),
            ("rollout GPUs (engines x TP)", self.rollout_gpus),
        ]
        rows += [
            (f"pool {p}: GPUs reserved / roles", f"{self.gpus_per_pool[p]} / {', '.join(self.roles_per_pool[p])}")
            for p in self.gpus_per_pool
        ]
        rows.append(("GPUs in all pools", self.total_gpus))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# The estimators' properties come from their registry entries (rlhf_dist.algorithms.registry).
CRITIC_ESTIMATORS = {n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic}
GROUP_ESTIMATORS = {n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_groups}
# Estimators whose advantages come from sequence scores alone: a per-token KL reward would be ignored.
SCORE_ONLY_ESTIMATORS = {n for n, e in ADVANTAGE_ESTIMATORS.items() if not e.uses_kl_reward}


def uses_critic(cfg: Config) -> bool:
    return cfg.ppo.advantage_estimator in CRITIC_ESTIMATORS


def role_gpus(cfg: Config) -> dict[str, tuple[str, int]]:
    """role -> (pool, GPUs it needs). The reward role counts only when a reward model is configured."""
    p = cfg.placement
    out = {"policy": (p.policy.pool, p.policy.num_gpus)}
    if uses_critic(cfg):
        if p.critic is None:
            raise ConfigError(
                f"placement.critic: advantage estimator {cfg.ppo.advantage_estimator!r} trains a critic, so the "
                "critic role needs a pool"
            )
        out["critic"] = (p.critic.pool, p.critic.num_gpus)
    if uses_reference(cfg):
        out["reference"] = (p.reference.pool, p.reference.num_gpus)
    out["rollout"] = (p.rollout.pool, p.rollout.num_engines * p.rollout.tensor_parallel_size)
    if cfg.reward.model is not None:
        if p.reward is None:
            raise ConfigError("placement.reward: reward.model is set, so the reward role needs a pool")
        out["reward"] = (p.reward.pool, p.reward.num_gpus)
    return out


def derive(cfg: Config) -> Derived:
    """Check the arithmetic between fields and compute derived values; raises ConfigError naming the fields."""
    ppo, p = cfg.ppo, cfg.placement
    samples = ppo.rollout_batch_size * cfg.rollout.n_samples_per_prompt
    roles = role_gpus(cfg)
    layout = pool_layout(p.pools, roles)
    tp = p.rollout.tensor_parallel_size
    if tp > p.pools[p.rollout.pool].gpus_per_node:
        raise ConfigError(
            f"placement.rollout.tensor_parallel_size: {tp} exceeds the GPUs per node of pool {p.rollout.pool!r} "
            f"({p.pools[p.rollout.pool].gpus_per_node}); a tensor-parallel engine must fit on one node"
        )

    def batch_check(role: str, ranks: int) -> int:
        if samples % ppo.mini_batch_size:
            raise ConfigError(
                f"ppo.mini_batch_size: {ppo.mini_batch_size} does not divide the samples per step "
                f"({ppo.rollout_batch_size} prompts x {cfg.rollout.n_samples_per_prompt} samples = {samples})"
            )
        per_update = ppo.micro_batch_size * ranks
        if ppo.mini_batch_size % per_update:
            raise ConfigError(
                f"ppo.mini_batch_size: {ppo.mini_batch_size} is not a multiple of micro_batch_size x {role} ranks "
                f"({ppo.micro_batch_size} x {ranks} = {per_update})"
            )
        return ppo.mini_batch_size // per_update

    check_algorithm(cfg)
    if p.reward is not None and p.reward.zero_stage != 0:
        raise ConfigError("placement.reward.zero_stage: only 0 (a full replica per rank) is supported for the reward model")
    ga_policy = batch_check("policy", p.policy.num_gpus)
    critic_ranks = p.critic.num_gpus if "critic" in roles else 0
    ga_critic = batch_check("critic", critic_ranks) if critic_ranks else 0
    for role, ranks in (("reference", p.reference.num_gpus), ("rollout", p.rollout.num_engines)):
        if role in roles and samples % ranks:
            raise ConfigError(f"placement.{role}: {samples} samples per step do not split evenly over {ranks} ranks")
    return Derived(
        samples_per_step=samples,
        policy_ranks=p.policy.num_gpus,
        critic_ranks=critic_ranks,
        samples_per_policy_rank=samples // p.policy.num_gpus,
        grad_accum_policy=ga_policy,
        grad_accum_critic=ga_critic,
        optimizer_steps_per_step=ppo.epochs * samples // ppo.mini_batch_size,
        rollout_gpus=p.rollout.num_engines * tp,
        layout=layout,
    )


def check_algorithm(cfg: Config) -> None:
    ppo, n = cfg.ppo, cfg.rollout.n_samples_per_prompt
    est = ppo.advantage_estimator
    if est in GROUP_ESTIMATORS and n < 2:
        raise ConfigError(
            f"rollout.n_samples_per_prompt: advantage estimator {est!r} compares samples of the same prompt, "
            f"so it needs at least 2 (got {n})"
        )
    if ppo.dynamic_sampling and n < 2:
        raise ConfigError("ppo.dynamic_sampling: drops prompts whose samples all score the same; needs rollout.n_samples_per_prompt >= 2")
    if est in SCORE_ONLY_ESTIMATORS and ppo.kl_coef > 0:
        raise ConfigError(
            f"ppo.kl_coef: {est!r} computes advantages from sequence scores only, so a KL reward penalty would be "
            "ignored; use ppo.kl_loss_coef for a KL term in the loss"
        )
    if ppo.kl_target is not None and ppo.kl_coef == 0:
        raise ConfigError("ppo.kl_target: the adaptive controller scales ppo.kl_coef, which is 0; set an initial kl_coef")
    if ppo.policy_loss == "clip_higher" and ppo.clip_eps_high is None:
        raise ConfigError("ppo.clip_eps_high: policy_loss 'clip_higher' needs an upper clip (e.g. 0.28 with clip_eps 0.2)")
    if ppo.overlong_buffer is not None and ppo.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError(
            f"ppo.overlong_buffer: {ppo.overlong_buffer} must be smaller than rollout.max_new_tokens ({cfg.rollout.max_new_tokens})"
        )
    if ppo.is_band[0] >= ppo.is_band[1] or ppo.is_band[0] < 0:
        raise ConfigError(f"ppo.is_band: {list(ppo.is_band)} must be [low, high] with 0 <= low < high")
    k, pl = cfg.rollout.max_staleness, cfg.placement
    if k > 0 and pl.rollout.pool == pl.policy.pool:
        raise ConfigError(
            f"rollout.max_staleness: {k} needs the rollout engines on their own pool (they share {pl.policy.pool!r} "
            "with the policy, so generation cannot overlap training); use 0 or move placement.rollout.pool"
        )
    if unknown := set(cfg.cluster.cpu_cores) - set(pl.pools):
        raise ConfigError(f"cluster.cpu_cores: {sorted(unknown)} not in placement.pools ({', '.join(pl.pools)})")
    if k > 0 and ppo.dynamic_sampling:
        raise ConfigError("rollout.max_staleness: asynchronous mode does not support ppo.dynamic_sampling; use 0")
    if ppo.old_logprobs == "engine" and (k > 0 or ppo.is_correction != "none"):
        raise ConfigError(
            "ppo.old_logprobs: 'engine' cannot be combined with rollout.max_staleness > 0 or ppo.is_correction: the "
            "off-policy correction weighs the learner's log-probs against the engine's; use 'learner'"
        )


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Read YAML (or start from `base`), apply dotted overrides, validate. Raises ConfigError with field names."""
    cfg = validate(Config, read_config_data(path, overrides, base))
    derive(cfg)  # arithmetic errors surface here, before anything starts
    return cfg
