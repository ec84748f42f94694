"""Derived values of an RL config (batch arithmetic, layout), computed in one place, and the checks between
sections that only hold together; `load_config` reads, validates and derives once."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS
from rlhf_dist.config.io import read_config_data, validate
from rlhf_dist.config.layout import PoolLayout, check_tp_on_node, place_on_nodes, pool_layout
from rlhf_dist.config.passes import reference_role
from rlhf_dist.config.rl import Config
from rlhf_dist.errors import ConfigError


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
    logprob_diff_limit: float | None  # sync.max_logprob_diff, "auto" resolved from model.dtype; None: reported only
    layout: PoolLayout  # pools -> roles and reserved GPUs (rlhf_dist.layout, shared with every command)
    micro_batch: str = ""  # what one forward/backward holds: "4 samples" or "2048 tokens, packed"
    infer_micro_batch: str = ""  # the same for the passes without gradients

    @property
    def gpus_per_pool(self) -> dict[str, int]:
        return self.layout.gpus_per_pool

    @property
    def roles_per_pool(self) -> dict[str, list[str]]:
        return self.layout.roles_per_pool

    @property
    def total_gpus(self) -> int:
        return self.layout.total_gpus

    @property
    def grad_accumulation(self) -> str:
        if "tokens" in self.micro_batch:  # as many micro-batches as the token budget needs, step by step
            return "by token budget"
        return f"{self.grad_accum_policy} / {self.grad_accum_critic}"

    def table(self) -> str:
        rows = [
            ("samples per step (prompts x samples/prompt)", self.samples_per_step),
            ("policy ranks / critic ranks", f"{self.policy_ranks} / {self.critic_ranks or 'none (critic-free)'}"),
            ("samples per policy rank per step", self.samples_per_policy_rank),
            ("micro-batch (update / passes)", f"{self.micro_batch} / {self.infer_micro_batch}"),
            ("grad accumulation (policy / critic)", self.grad_accumulation),
            ("optimizer steps per PPO step", self.optimizer_steps_per_step),
            ("rollout GPUs (engines x TP)", self.rollout_gpus),
            ("engine/learner log-prob limit", "reported only" if self.logprob_diff_limit is None else f"{self.logprob_diff_limit:g}"),
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


# sync.max_logprob_diff: auto, by model.dtype: the largest |engine - learner| log-prob allowed. fp32 engines and
# learners agree to about 1e-5 on CPU (tests/test_lean_integration.py holds them within 1e-4); bf16 and fp16
# round in every layer, so there only a gross difference (a wrong or stale tensor) is caught. The 16-bit values
# are not measured here (no GPU run): bounds for what rounding gives, to be tightened from GPU runs.
DEFAULT_LOGPROB_LIMITS = {"float32": 1e-3, "float16": 0.25, "bfloat16": 1.0}


def logprob_diff_limit(cfg: Config) -> float | None:
    limit = cfg.sync.max_logprob_diff
    return DEFAULT_LOGPROB_LIMITS[cfg.model.dtype] if limit == "auto" else limit


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
    if reference_role(cfg):  # with model.lora the policy's ranks are the reference
        if p.reference is None:
            raise ConfigError("placement.reference: a KL term (or ppo.log_kl) needs the reference model, so the reference "
                              "role needs a pool")
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
    check_tp_on_node("placement.rollout.tensor_parallel_size", tp, p.pools, p.rollout.pool)
    if cfg.cluster.node_gpus:
        place_on_nodes(p.pools, layout, cfg.cluster.node_gpus)

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
    check_lora(cfg)
    if p.reward is not None and p.reward.zero_stage != 0:
        raise ConfigError("placement.reward.zero_stage: only 0 (a full replica per rank) is supported for the reward model")
    ga_policy = batch_check("policy", p.policy.num_gpus)
    critic_ranks = p.critic.num_gpus if "critic" in roles else 0
    ga_critic = batch_check("critic", critic_ranks) if critic_ranks else 0
    # Every role that takes a share of the step's samples gets an equal one (the learners' shares follow from the
    # batch checks above): a reward model on 3 ranks would otherwise score 16 samples as 6 + 5 + 5.
    split_over = {"reference": ("num_gpus", p.reference.num_gpus if p.reference is not None else 1),
                  "rollout": ("num_engines", p.rollout.num_engines),
                  "reward": ("num_gpus", p.reward.num_gpus if p.reward is not None else 1)}
    for role, (field, ranks) in split_over.items():
        if role in roles and samples % ranks:
            raise ConfigError(f"placement.{role}.{field}: {samples} samples per step ({ppo.rollout_batch_size} prompts x "
                              f"{cfg.rollout.n_samples_per_prompt} samples) do not split evenly over {ranks} ranks")
    update_mb, infer_mb = micro_batch_budgets(cfg)
    return Derived(
        samples_per_step=samples,
        policy_ranks=p.policy.num_gpus,
        critic_ranks=critic_ranks,
        samples_per_policy_rank=samples // p.policy.num_gpus,
        grad_accum_policy=ga_policy,
        grad_accum_critic=ga_critic,
        optimizer_steps_per_step=ppo.epochs * samples // ppo.mini_batch_size,
        rollout_gpus=p.rollout.num_engines * tp,
        logprob_diff_limit=logprob_diff_limit(cfg),
        layout=layout,
        micro_batch=update_mb,
        infer_micro_batch=infer_mb,
    )


def infer_budget(cfg: Config) -> int | None:
    """The passes' token budget: their own, else the update's (none: micro-batches of a fixed count)."""
    return cfg.ppo.infer_micro_batch_tokens or cfg.ppo.micro_batch_tokens


def micro_batch_budgets(cfg: Config) -> tuple[str, str]:
    """The update's and the passes' micro-batches in words, with the budgets checked against the longest sequence."""
    ppo = cfg.ppo
    longest = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    for field, budget in (("micro_batch_tokens", ppo.micro_batch_tokens), ("infer_micro_batch_tokens", ppo.infer_micro_batch_tokens)):
        if budget is not None and budget < longest:
            raise ConfigError(
                f"ppo.{field}: {budget} is smaller than the longest sequence ({longest} tokens: data.max_prompt_tokens="
                f"{cfg.data.max_prompt_tokens} + rollout.max_new_tokens={cfg.rollout.max_new_tokens}); raise it to at least {longest}"
            )
    layout = "packed" if ppo.packing else "padded"

    def words(budget: int | None) -> str:
        return f"{ppo.micro_batch_size} samples, {layout}" if budget is None else f"{budget} tokens, {layout}"

    return words(ppo.micro_batch_tokens), words(infer_budget(cfg))


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
    if k > 0 and k >= cfg.run.steps:
        raise ConfigError(f"rollout.max_staleness: {k} is not less than run.steps ({cfg.run.steps}): no batch could be that stale")
    if k > 0 and pl.rollout.pool == pl.policy.pool:
        raise ConfigError(
            f"rollout.max_staleness: {k} needs the rollout engines on their own pool (they share {pl.policy.pool!r} "
            "with the policy, so generation cannot overlap training); use 0 or move placement.rollout.pool"
        )
    if unknown := set(cfg.cluster.cpu_cores) - set(pl.pools):
        raise ConfigError(f"cluster.cpu_cores: {sorted(unknown)} not in placement.pools ({', '.join(pl.pools)})")
    check_cores(cfg.cluster)
    steps = cfg.run.steps
    sched = ppo.lr_schedule
    if sched.warmup_steps > (sched.total_steps or steps):
        length = f"ppo.lr_schedule.total_steps={sched.total_steps}" if sched.total_steps else f"run.steps={steps}"
        raise ConfigError(f"ppo.lr_schedule.warmup_steps: {sched.warmup_steps} is longer than the schedule ({length})")
    if k > 0 and ppo.dynamic_sampling:
        raise ConfigError("rollout.max_staleness: asynchronous mode does not support ppo.dynamic_sampling; use 0")
    if ppo.old_logprobs == "engine" and (k > 0 or ppo.is_correction != "none"):
        raise ConfigError(
            "ppo.old_logprobs: 'engine' cannot be combined with rollout.max_staleness > 0 or ppo.is_correction: the "
            "off-policy correction weighs the learner's log-probs against the engine's; use 'learner'"
        )


def check_lora(cfg: Config) -> None:
    """model.lora and model.critic_lora against the rest of the config (their modules against the model: preflight)."""
    m = cfg.model
    if m.critic_lora is not None and not uses_critic(cfg):
        raise ConfigError(f"model.critic_lora: advantage estimator {cfg.ppo.advantage_estimator!r} trains no critic; remove it")
    if m.lora is None:
        if cfg.sync.lora != "adapter":
            raise ConfigError(f"sync.lora: {cfg.sync.lora!r} applies only with model.lora (the policy trains all its weights)")
        return
    if m.reference is not None and m.reference != m.policy:
        raise ConfigError(
            f"model.reference: with model.lora the reference is the policy with its adapter off ({m.policy!r}); "
            f"a separate reference {m.reference!r} is not supported, remove it"
        )
    if cfg.rollout.max_staleness + 1 > MAX_ENGINE_ADAPTERS and cfg.sync.lora == "adapter":
        raise ConfigError(
            f"rollout.max_staleness: {cfg.rollout.max_staleness} would keep {cfg.rollout.max_staleness + 1} adapters "
            f"in each engine (one per weights version in flight), more than {MAX_ENGINE_ADAPTERS}; use sync.lora: merged"
        )


# Adapters one engine keeps loaded at most (rollout.max_staleness + 1): each takes a slot of LoRA buffers.
MAX_ENGINE_ADAPTERS = 16


def check_cores(cluster) -> None:
    """cluster.cpu_cores: each pool's cores parse, and on a local cluster (started on this machine) exist here."""
    import os

    from rlhf_dist.dist import parse_cores

    have = os.sched_getaffinity(0)
    for pool, text in cluster.cpu_cores.items():
        try:
            cores = parse_cores(text)
        except ValueError:
            raise ConfigError(f"cluster.cpu_cores.{pool}: {text!r} is not a list of cores like \"0\" or \"2-3,6\"") from None
        if not cores:
            raise ConfigError(f"cluster.cpu_cores.{pool}: {text!r} names no core")
        if cluster.address is None and (missing := sorted(cores - have)):
            raise ConfigError(f"cluster.cpu_cores.{pool}: core(s) {missing} do not exist here (this process may run on "
                              f"{format_cores(have)})")


def format_cores(cores) -> str:
    return ",".join(str(c) for c in sorted(cores))


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Read YAML (or start from `base`), apply dotted overrides, validate. Raises ConfigError with field names."""
    cfg = validate(Config, read_config_data(path, overrides, base))
    derive(cfg)  # arithmetic errors surface here, before anything starts
    return cfg
