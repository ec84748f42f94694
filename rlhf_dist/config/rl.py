"""The RL config's sections (train, async, pipeline's RL stage): pydantic models, validated once and frozen.
Values computed from them live in rlhf_dist.config.derive; workers receive narrow specs built from them
(rlhf_dist.config.specs), never the config."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, names
from rlhf_dist.config.common import EvalConfig, InputFile, LRSchedule, ResumableJob, RunOutput, Strict


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
