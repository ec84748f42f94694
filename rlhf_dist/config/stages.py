"""Typed configuration of the supervised and preference stages (`sft`, `rm`, `dpo`) and AI-feedback labelling.

The sections they share with PPO (run settings, cluster, timeouts, pools, learner placement, rollout) are the
same classes, so a stage is configured, placed and launched the way a PPO job is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rlhf_dist.config.common import (AttnImplementation, ChatTemplate, DType, GradientCheckpointing, InputFile, Job, LoraConfig,
                                     LRSchedule, ResumableJob, RunDir, RunName, RunOutput, Strict, TokenBudget)
from rlhf_dist.config.io import read_config_data, validate
from rlhf_dist.config.rl import DataConfig, InferenceRole, LearnerRole, PoolConfig, RewardFunction, RolloutConfig, RolloutRole
from rlhf_dist.errors import ConfigError
from rlhf_dist.config.layout import check_tp_on_node, place_on_nodes, pool_layout


class StageRun(RunOutput):
    name: RunName = "stage"
    output_dir: RunDir = "runs/stage"


class StageModel(Strict):
    path: str = Field(
        description="HF directory (or hub id) of the model to train; SFT: the base, RM and DPO: usually the SFT model"
    )
    make_tiny: bool = Field(
        False, description="create a tiny random model + tokenizer at `path` if the directory is missing"
    )
    reference: str | None = Field(
        None, description="DPO: the frozen reference (default: `path`, i.e. the model before training)"
    )
    dtype: DType = "float32"
    attn_implementation: AttnImplementation = "sdpa"
    gradient_checkpointing: GradientCheckpointing = False
    lora: LoraConfig | None = Field(
        None,
        description="train a LoRA adapter instead of the model's weights (a reward model's score head trains whole); "
        "RUN_DIR/final holds the merged model and final/adapter the adapter; none: full fine-tuning",
    )


class StageData(Strict):
    train: InputFile = Field(
        description="JSONL (read line by line: errors name the line) or parquet (read with `datasets`: errors name "
        "the row)"
    )
    eval: InputFile | None = Field(
        None, description="held-out file, read as `train` is; without one, `eval_fraction` of `train` is held out"
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="the seeded share of `train` held out without `eval`")
    prompt_key: str = Field("prompt", description="the field holding the prompt")
    response_key: str = Field("response", description="SFT: the field holding the response")
    chosen_key: str = Field("chosen", description="RM, DPO: the field holding the preferred response")
    rejected_key: str = Field("rejected", description="RM, DPO: the field holding the other response")
    messages_key: str | None = Field(
        None, description="SFT: a chat (list of {role, content}); the last message is the response"
    )
    margin_key: str | None = Field(None, description="RM: optional per-pair margin in the Bradley-Terry loss")
    apply_chat_template: ChatTemplate = False
    max_length: int = Field(256, ge=2, description="prompt + response tokens; a longer sample is a bad line")
    packing: bool = Field(
        False,
        description="pack each micro-batch's samples (both sequences of a pair) end to end into rows (per-sample "
        "positions, attention kept within each sample), so short samples do not pay for padding",
    )
    skip_bad_lines: bool = Field(
        False, description="bad lines stop the run with file:line, or, when true, are skipped and counted"
    )


class TrainConfig(Strict):
    epochs: int = Field(1, ge=1, description="passes over the training data, each a seeded shuffle")
    batch_size: int = Field(
        16, ge=1, description="samples (pairs for rm/dpo) per optimizer step, across all ranks"
    )
    micro_batch_size: int = Field(8, ge=1, description="samples per forward/backward on one rank")
    micro_batch_tokens: TokenBudget = Field(
        None,
        description="micro-batches of at most this many tokens (a pair's two sequences together; padded positions "
        "count unless data.packing) instead of micro_batch_size samples, balanced over the ranks, the loss "
        "normalised by the batch's token (sft) or pair count; none: micro_batch_size samples",
    )
    lr: float = Field(1e-5, gt=0, description="learning rate")
    lr_schedule: LRSchedule = Field(LRSchedule(), description="warmup counted in optimizer steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many optimizer steps")
    eval_every: int = Field(
        0, ge=0, description="held-out evaluation every N steps (0: at the end of each epoch only)"
    )


class DPOSettings(Strict):
    beta: float = Field(0.1, gt=0, description="scale of the implicit reward, beta x log-ratio to the reference")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="DPO's sigmoid loss or IPO's")


class StagePlacement(Strict):
    pools: dict[str, PoolConfig] = Field(description="name -> pool; a pool is one Ray placement group per node, packed on it")
    learner: LearnerRole = Field(description="the trained model's learner ranks")


class StageConfig(ResumableJob):
    model: StageModel = Field(description="the model to train (and DPO's reference)")
    data: StageData = Field(description="demonstrations (sft) or preference pairs (rm, dpo)")
    placement: StagePlacement = Field(description="pools of GPUs and the learner's place on them")
    run: StageRun = Field(StageRun(), description="name, output directory, seed, loggers")
    train: TrainConfig = Field(TrainConfig(), description="epochs, batch sizes, optimiser")


class SFTConfig(StageConfig):
    pass


class RMConfig(StageConfig):
    pass


class DPOConfig(StageConfig):
    dpo: DPOSettings = Field(DPOSettings(), description="the DPO or IPO loss")


# --- AI feedback (RLAIF) labelling ---


class LabelModel(Strict):
    policy: str = Field(description="the model whose samples are ranked (HF directory)")
    make_tiny: bool = Field(
        False, description="create a tiny random model + tokenizer at `policy` if the directory is missing"
    )
    dtype: DType = "float32"
    attn_implementation: AttnImplementation = "sdpa"
    gradient_checkpointing: GradientCheckpointing = False


class JudgeConfig(Strict):
    kind: Literal["reward_model", "function", "llm"] = Field(description="what scores a response")
    model: str | None = Field(
        None, description="reward_model: a sequence-classification model; llm: a causal LM (default: the policy)"
    )
    function: RewardFunction | None = Field(None, description="function: scores (prompt, response) -> float")
    template: str = Field(
        "Question: {prompt}\nAnswer A: {a}\nAnswer B: {b}\nWhich answer is better, A or B? The better answer is",
        description="llm: the judge prompt, shown both answers and asked which is better; holds {prompt}, {a}, {b}",
    )
    labels: tuple[str, str] = Field(
        (" A", " B"), description="llm: the two labels whose log-probabilities decide; each pair is asked in both "
        "orders",
    )
    max_prompt_tokens: int = Field(512, ge=8, description="llm: the judge prompt's length limit")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "reward_model" and self.model is None:
            raise ValueError("judge.model: a reward_model judge needs the path of a sequence-classification model")
        if self.kind == "function" and self.function is None:
            raise ValueError("judge.function: a function judge needs {name: 'package.module:function'}")
        if self.kind == "llm":
            for field in ("{prompt}", "{a}", "{b}"):
                if field not in self.template:
                    raise ValueError(f"judge.template: must contain {field}")
        return self


class LabelPlacement(Strict):
    pools: dict[str, PoolConfig] = Field(description="name -> pool; a pool is one Ray placement group per node, packed on it")
    rollout: RolloutRole = Field(description="the vLLM engines that sample the responses")
    judge: InferenceRole | None = Field(None, description="reward_model and llm judges: the judge's ranks")


class LabelConfig(Job):
    """Writes RUN_DIR/preferences.jsonl: prompt, chosen, rejected (the best and worst sample), their scores."""

    run: StageRun = Field(StageRun(name="label", output_dir="runs/label"), description="name, output directory, seed")
    model: LabelModel = Field(description="the policy whose samples are judged")
    data: DataConfig = Field(description="the prompts, read as PPO reads them")
    rollout: RolloutConfig = Field(
        RolloutConfig(n_samples_per_prompt=2), description="sampling, as in PPO; at least 2 samples per prompt"
    )
    judge: JudgeConfig = Field(description="what ranks the samples")
    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    placement: LabelPlacement = Field(description="pools of GPUs, the engines and the judge")

    @model_validator(mode="after")
    def _checks(self):
        if self.rollout.n_samples_per_prompt < 2:
            raise ValueError("rollout.n_samples_per_prompt: labelling compares samples of one prompt; needs at least 2")
        if self.judge.kind != "function" and self.placement.judge is None:
            raise ValueError(f"placement.judge: a {self.judge.kind} judge runs on GPUs of its own role; give it a pool")
        return self


def stage_roles(cfg) -> dict[str, tuple[str, int]]:
    """role -> (pool, GPUs) of a stage or labelling config, for the pool arithmetic (rlhf_dist.config.layout)."""
    if isinstance(cfg, LabelConfig):
        p = cfg.placement
        roles = {"rollout": (p.rollout.pool, p.rollout.num_engines * p.rollout.tensor_parallel_size)}
        if p.judge is not None and cfg.judge.kind != "function":
            roles["judge"] = (p.judge.pool, p.judge.num_gpus)
        return roles
    return {"learner": (cfg.placement.learner.pool, cfg.placement.learner.num_gpus)}


def check_stage(kind: str, cfg: StageConfig) -> None:
    """Arithmetic and combinations of fields, before any data is read or actor started."""
    t, ranks = cfg.train, cfg.placement.learner.num_gpus
    longest = cfg.data.max_length * (1 if kind == "sft" else 2)  # a pair's sequences share a micro-batch
    if t.micro_batch_tokens is not None and t.micro_batch_tokens < longest:
        what = "data.max_length" if kind == "sft" else f"a pair, 2 x data.max_length={cfg.data.max_length}"
        raise ConfigError(f"train.micro_batch_tokens: {t.micro_batch_tokens} is smaller than the longest sample "
                          f"({longest} tokens: {what}); raise it to at least {longest}")
    per_step = t.micro_batch_size * ranks
    if t.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is not a multiple of micro_batch_size x learner ranks "
            f"({t.micro_batch_size} x {ranks} = {per_step})"
        )


STAGES = {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "label": LabelConfig}


def load_stage_config(kind: str, path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None):
    """Read the YAML of stage `kind`, apply dotted overrides, validate; ConfigError names the field."""
    cfg = validate(STAGES[kind], read_config_data(path, overrides, base))
    layout = pool_layout(cfg.placement.pools, stage_roles(cfg))
    if kind == "label":
        r = cfg.placement.rollout
        check_tp_on_node("placement.rollout.tensor_parallel_size", r.tensor_parallel_size, cfg.placement.pools, r.pool)
    if cfg.cluster.node_gpus:
        place_on_nodes(cfg.placement.pools, layout, cfg.cluster.node_gpus)
    if kind != "label":
        check_stage(kind, cfg)
    return cfg
