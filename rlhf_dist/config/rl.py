"""The RL config's sections (train, async, pipeline's RL stage): pydantic models, validated once and frozen.
Values computed from them live in rlhf_dist.config.derive; workers receive narrow specs built from them
(rlhf_dist.config.specs), never the config."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, names
from rlhf_dist.config.common import (AttnImplementation, ChatTemplate, DType, EvalConfig, GradientCheckpointing, InputFile, LoraConfig,
                                     LRSchedule, MAX_WAIT_S, ResumableJob, RunOutput, Strict, TokenBudget)


class RunConfig(RunOutput):
    steps: int = Field(10, ge=1, description="PPO steps to run")
    save_final: bool = Field(True, description="write the trained policy to RUN_DIR/final/ in HuggingFace format")


class ModelConfig(Strict):
    policy: str = Field(description="local directory (or hub id) of the SFT/initial policy, HF format")
    make_tiny: bool | Literal["qwen2", "llama3"] = Field(
        False,
        description="create a tiny random model + tokenizer at `policy` if the directory is missing; `qwen2` or "
        "`llama3`: a chat model with that family's chat template (rlhf_dist/data/tiny_chat.py)",
    )
    tiny_init_std: float = Field(
        0.02, gt=0, le=1,
        description="make_tiny: the tiny model's initial weight std; 0.02 (transformers' default) makes outputs nearly "
        "uniform, with logits the frozen head keeps too small for a LoRA adapter to move (configs/grpo_lora_cpu.yaml "
        "uses 0.2)",
    )
    critic: str | None = Field(None, description="default: the policy weights (value head freshly initialised)")
    reference: str | None = Field(None, description="default: the policy weights")
    dtype: DType = "float32"
    attn_implementation: AttnImplementation = "sdpa"
    gradient_checkpointing: GradientCheckpointing = False
    lora: LoraConfig | None = Field(
        None,
        description="train a LoRA adapter on the policy instead of its weights; the reference is then the policy with "
        "the adapter off (no reference role), and syncs send the adapter alone (`sync.lora`); none: full fine-tuning",
    )
    critic_lora: LoraConfig | None = Field(
        None, description="a LoRA adapter for the critic (its value head trains whole); none: the critic trains all its weights"
    )


class DataConfig(Strict):
    prompts: InputFile = Field(description="JSONL (one object per line), or parquet through `datasets`")
    prompt_key: str = Field("prompt", description="the field holding the prompt")
    label_key: str | None = Field(
        None, description="a field passed to reward functions as `label` (e.g. the reference answer)"
    )
    apply_chat_template: ChatTemplate = False
    max_prompt_tokens: int = Field(64, ge=1, description="a longer prompt is a bad line")
    skip_bad_lines: bool = Field(
        False,
        description="bad lines (malformed JSON, missing fields, non-UTF-8, too long) stop the run with file:line, or, "
        "when true, are skipped and counted in the log (never silently)",
    )


class RolloutConfig(Strict):
    max_new_tokens: int = Field(32, ge=1, description="a response is cut here (finish reason `length`)")
    # vLLM's own range, so an engine never refuses it after the actors start (tests/test_generation.py checks
    # the bounds against vLLM): it raises a value below 0.01 to 0.01 without failing, and refuses one above 2.
    temperature: float = Field(1.0, ge=0.01, le=2, description="sampling temperature (vLLM's range, 0.01 to 2)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="0: off")
    min_p: float = Field(0.0, ge=0, le=1, description="0: off")
    # An empty stop string would end every response at once; vLLM refused one only after the engines started.
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="strings that end a response (kept in its tokens)"
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="token ids that end a response, besides EOS; each must be in the vocabulary"
    )
    n_samples_per_prompt: int = Field(1, ge=1, description="responses sampled per prompt")
    kv_cache_gb: int = Field(1, ge=1, description="CPU only: KV cache size per engine")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="GPU only: the share of each GPU's memory vLLM reserves at start-up"
    )
    enforce_eager: bool = Field(True, description="no compiled graphs in the engines")
    max_staleness: int = Field(
        0, ge=0,
        description="asynchronous mode: engines generate up to k weight versions ahead of the learners (0: on-policy, "
        "in step)",
    )
    warmup: bool = Field(
        True,
        description="each engine generates one step's share of random prompts at set-up, beside the learners' start, "
        "so step 1 does not pay vLLM's first-call cost",
    )


class RewardFunction(Strict):
    name: str = Field(
        description="`package.module:function`, called as `fn(prompt: str, response: str, **kwargs) -> float`, plus "
        "`label=` if the function takes it"
    )
    weight: float = Field(1.0, description="the function's weight in the score")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments passed on every call")
    timeout_s: float = Field(
        60, gt=0, le=MAX_WAIT_S, description="per call; a batch waits timeout_s x the calls its busiest process runs, never 0"
    )
    retries: int = Field(0, ge=0, description="attempts after a failed call")
    concurrency: int = Field(8, ge=1, description="calls in flight at once: worker processes (rewards/pool.py)")


class RewardConfig(Strict):
    model: str | None = Field(None, description="HF sequence-classification model directory, scored at the last token")
    model_weight: float = Field(1.0, description="the reward model's weight in the score")
    # So model_weight and KL coefficients mean the same for any reward model.
    model_normalize: bool = Field(
        False,
        description="standardise the reward model's scores with the mean and std `rlhf-dist rm` measured on held-out "
        "pairs (reward_stats.json beside the model)",
    )
    functions: list[RewardFunction] = Field(default_factory=list, description="Python reward functions")

    @model_validator(mode="after")
    def _some_reward(self):
        for f in self.functions:
            module, colon, attr = f.name.partition(":")
            if not (colon and module.strip() and attr.strip()):
                raise ValueError(f"reward.functions name {f.name!r} must look like 'package.module:function'")
        return self


class EnvConfig(Strict):
    """An agent environment: rollouts become multi-turn episodes (docs/agents.md)."""

    name: str = Field(
        description="a built-in environment (`calculator`, `python`, `arith_feedback`) or a user's class, "
        "`package.module:Class`"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the environment's constructor (one instance per trajectory)"
    )
    max_turns: int = Field(4, ge=1, description="assistant turns per trajectory at most (finish reason `length` after)")
    max_new_tokens_per_turn: int = Field(64, ge=1, description="tokens one assistant turn may sample")
    max_total_new_tokens: int = Field(
        256, ge=1,
        description="tokens sampled over all turns; rollout.max_new_tokens bounds everything after the prompt, tool "
        "output included",
    )
    tool_timeout_s: float = Field(
        10, gt=0, description="wall clock of one tool call, its process's start and sandbox set-up included"
    )
    tool_output_chars: int = Field(
        2000, ge=1, description="a tool's output (and an observation) is cut here and marked as cut"
    )
    tool_memory_mb: int = Field(1024, ge=64, description="address-space limit of a tool's process (RLIMIT_AS)")
    trajectory_timeout_s: float = Field(
        120, gt=0, description="a trajectory not done by then ends with finish reason `timeout` (tools included)"
    )
    concurrency: int = Field(16, ge=1, description="environment steps and tool calls running at once")
    check_template: Literal["report", "error", "restart", "off"] = Field(
        "report",
        description="compare each trajectory's ids with a full render of its conversation: count differences "
        "(`rollout/template_mismatches`), stop the run at the first, sample a differing trajectory again (up to 2 "
        "times, `rollout/template_restarts`), or skip the check",
    )


class PPOConfig(Strict):
    """The RL algorithm: batch sizes, advantage estimator, policy loss, KL handling, optimiser."""

    rollout_batch_size: int = Field(8, ge=1, description="prompts per step")
    mini_batch_size: int = Field(
        8, ge=1,
        description="samples per optimizer step, across all data-parallel ranks; must divide the samples per step",
    )
    micro_batch_size: int = Field(4, ge=1, description="samples per forward/backward on one rank")
    micro_batch_tokens: TokenBudget = Field(
        None,
        description="policy and critic updates: micro-batches of at most this many tokens (prompt + response; "
        "padded positions count unless `packing`) instead of micro_batch_size samples, balanced over the ranks, "
        "losses normalised by the mini-batch's token (or sequence) count; none: micro_batch_size samples",
    )
    infer_micro_batch_tokens: TokenBudget = Field(
        None,
        description="the passes without gradients (reference, critic, policy log-probs, reward model): micro-batches "
        "of at most this many tokens; none: micro_batch_tokens (if set), else micro_batch_size samples",
    )
    packing: bool = Field(
        False,
        description="learners and reward model pack each micro-batch's samples end to end into rows (per-sample "
        "positions, attention kept within each sample) instead of padding them; the same log-probs and values",
    )
    epochs: int = Field(1, ge=1, description="passes over each step's samples")
    advantage_estimator: names(ADVANTAGE_ESTIMATORS) = Field("gae", description="how advantages are computed")
    policy_loss: names(POLICY_LOSSES) = Field("ppo", description="the policy's surrogate loss")
    loss_aggregation: names(AGGREGATIONS) = Field(
        "token_mean", description="how token losses are averaged: per token, per sequence, or Dr. GRPO's token sums"
    )
    clip_eps: float = Field(0.2, gt=0, description="lower clip (and upper, unless clip_eps_high is set)")
    clip_eps_high: float | None = Field(None, gt=0, description="DAPO clip-higher: the upper clip of `clip_higher`")
    dual_clip_c: float = Field(3.0, gt=1, description="`dual_clip`: bound of c x |A| on negative-advantage tokens")
    value_clip_eps: float = Field(0.2, gt=0, description="the critic's value clip")
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty put in the per-token rewards (`gae`, `reinforce_pp*`)")
    kl_estimator: names(KL_ESTIMATORS) = Field("k1", description="the estimator of the KL in the rewards")
    kl_target: float | None = Field(
        None, gt=0, description="adaptive kl_coef toward this per-token KL; none: kl_coef is fixed"
    )
    kl_horizon: int = Field(
        10000, ge=1, description="the adaptive coefficient moves by at most 20% x samples/kl_horizon per step"
    )
    kl_loss_coef: float = Field(0.0, ge=0, description="KL to the reference as a loss term (GRPO style)")
    kl_loss_estimator: names(KL_ESTIMATORS) = Field("k3", description="the estimator of the KL loss term")
    log_kl: bool = Field(False, description="run the reference for the KL metric even when no KL term uses it")
    old_logprobs: Literal["learner", "engine"] = Field(
        "learner",
        description="old log-probs: the learner's (recomputed, or its first forward's in a single on-policy update) "
        "or the engines'",
    )
    whiten_advantages: bool = Field(True, description="gae only; the others normalise as their definition says")
    entropy_coef: float = Field(0.0, description="weight of an entropy bonus in the policy loss")
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop prompt groups whose scores are all equal and sample more prompts"
    )
    max_sampling_rounds: int = Field(4, ge=1, description="dynamic sampling: generations per step at most")
    overlong_buffer: int | None = Field(
        None, ge=1, description="DAPO soft overlong penalty over the last N tokens before max_new_tokens"
    )
    overlong_penalty: float = Field(1.0, ge=0, description="the overlong penalty at max_new_tokens, rising linearly")
    mask_truncated: bool = Field(
        False, description="DAPO overlong filtering: responses cut at max_new_tokens get no loss"
    )
    is_correction: names(CORRECTIONS) = Field(
        "none",
        description="engine-vs-learner importance-sampling correction (rlhf_dist.algorithms.correction), token or "
        "sequence level",
    )
    is_cap: float = Field(2.0, gt=1, description="the cap of the `*_tis` corrections")
    is_band: tuple[float, float] = Field((0.5, 2.0), description="the band [low, high] of the `*_mask` corrections")
    policy_lr: float = Field(1e-5, gt=0, description="the policy's learning rate")
    critic_lr: float = Field(1e-5, gt=0, description="the critic's learning rate")
    lr_schedule: LRSchedule = Field(LRSchedule(), description="policy and critic; warmup counted in PPO steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")


class PoolConfig(Strict):
    nodes: int = Field(1, ge=1, description="nodes in the pool")
    gpus_per_node: int = Field(1, ge=1, description="GPUs the pool takes on each node")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class LearnerRole(Strict):
    pool: str = Field(description="the pool (in `placement.pools`) the role runs on")
    num_gpus: int = Field(1, ge=1, description="one data-parallel rank per GPU")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload: bool = Field(False, description="ZeRO optimizer (and, at stage 3, parameter) offload to CPU")


class InferenceRole(Strict):
    pool: str = Field(description="the pool (in `placement.pools`) the role runs on")
    num_gpus: int = Field(1, ge=1, description="one data-parallel rank per GPU")
    zero_stage: Literal[0, 3] = Field(
        0,
        description="0: a full replica per rank; 3 (reference only): weights partitioned over the ranks with DeepSpeed "
        "ZeRO-3, gathered layer by layer in the forward pass, for models too large for one GPU",
    )


class RolloutRole(Strict):
    pool: str = Field(description="the pool (in `placement.pools`) the engines run on")
    num_engines: int = Field(1, ge=1, description="vLLM engines; requests are split evenly between them")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per engine, on one node; must split the model's attention and key/value heads"
    )


class PlacementConfig(Strict):
    pools: dict[str, PoolConfig] = Field(description="name -> pool; a pool is one Ray placement group per node, packed on it")
    policy: LearnerRole = Field(description="the policy's learner ranks")
    critic: LearnerRole | None = Field(None, description="needed only by estimators with a critic (gae)")
    reference: InferenceRole | None = Field(
        None, description="the reference model's ranks (started only when a KL needs it, and never with model.lora)"
    )
    reward: InferenceRole | None = Field(None, description="needed only when reward.model is set")
    rollout: RolloutRole = Field(description="the vLLM engines")
    share_processes: bool = Field(
        False,
        description="learner-side ranks on one bundle (policy, critic, a replicated reference and reward model; never "
        "ZeRO-3, never the engines) share one process, whose calls then run one after another "
        "(rlhf_dist/runtime/hosts.py)",
    )


class SyncConfig(Strict):
    bucket_mb: float = Field(64, gt=0, description="parameters travel in buckets of this size")
    verify_every: int = Field(1, ge=0, description="hash-check engines against the learner every N syncs; 0: off")
    max_logprob_diff: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto",
        description="stop the run when the engines' log-probs differ from the learner's by more than this: on the probe "
        "set after every verified sync (`sync/probe_logprob_diff_max`) and on the sampled tokens of on-policy batches "
        "(`rollout/engine_learner_logprob_diff_max`); auto: from model.dtype (float32 1e-3, float16 0.25, bfloat16 1.0); "
        "none: reported only",
    )
    probe_prompts: int = Field(
        4, ge=0, le=64,
        description="sequences in the weight probe (rlhf_dist/sync/probe.py): training prompts (their first 16 tokens), "
        "each followed by a fixed 8-token response; 0: no probe",
    )
    engine_load: Literal["auto", "vllm_reload"] = Field(
        "auto",
        description="how engines load synced weights. auto: unquantized eager Llama/Qwen2 CPU models through "
        "rlhf_dist/sync/cpu_reload.py (vLLM's general reload bookkeeping skipped, same engine outputs), everything "
        "else through vLLM's reload_weights; vllm_reload: always vLLM's (what GPU engines run; CPU tests run it too)",
    )


    lora: Literal["adapter", "merged"] = Field(
        "adapter",
        description="with model.lora: adapter sends only the adapter's tensors, which vLLM engines load as a LoRA "
        "adapter (one slot per weights version in flight); merged sends the base weights with the adapter merged "
        "in, for engines without LoRA support (the full sync, gathered bucket by bucket)",
    )


class FaultToleranceConfig(Strict):
    max_restarts: int = Field(
        0, ge=0,
        description="after a worker dies: restart all actor groups and resume from the last checkpoint, at most this "
        "often (needs checkpoints)",
    )


class Config(ResumableJob):
    run: RunConfig = Field(RunConfig(), description="name, output directory, seed, steps, loggers")
    model: ModelConfig = Field(description="the policy, critic and reference models")
    data: DataConfig = Field(description="the training prompts")
    rollout: RolloutConfig = Field(RolloutConfig(), description="generation by the vLLM engines")
    reward: RewardConfig = Field(description="a reward model and/or Python reward functions")
    ppo: PPOConfig = Field(PPOConfig(), description="the RL algorithm: batch sizes, estimator, loss, KL, optimiser")
    placement: PlacementConfig = Field(description="pools of GPUs and the role on each")
    sync: SyncConfig = Field(SyncConfig(), description="the weight sync from the policy to the engines")
    fault_tolerance: FaultToleranceConfig = Field(FaultToleranceConfig(), description="restarts after a dead worker")
    eval: EvalConfig | None = Field(None, description="held-out evaluation; none: no evaluation")
    env: EnvConfig | None = Field(None, description="an agent environment: multi-turn rollouts with tools; none: single-turn")

    @model_validator(mode="after")
    def _some_reward(self):
        if self.reward.model is None and not self.reward.functions and self.env is None:
            raise ValueError("set reward.model and/or reward.functions (or env): there is nothing to score rollouts with")
        return self

    @model_validator(mode="after")
    def _env_fits(self):
        if self.env is None:
            return self
        if not self.data.apply_chat_template:
            raise ValueError("env: an environment's turns are chat messages; set data.apply_chat_template=true")
        if self.env.max_total_new_tokens > self.rollout.max_new_tokens:
            raise ValueError(f"env.max_total_new_tokens: {self.env.max_total_new_tokens} exceeds rollout.max_new_tokens="
                             f"{self.rollout.max_new_tokens} (which bounds everything after the prompt)")
        return self

    @model_validator(mode="after")
    def _restarts_need_checkpoints(self):
        if self.fault_tolerance.max_restarts and not self.checkpoint.every_n_steps:
            raise ValueError(
                "fault_tolerance.max_restarts: restarts resume from the last checkpoint; set checkpoint.every_n_steps"
            )
        return self
