"""Configuration models every command shares: the strict base, path kinds, the run, cluster, timeouts and
checkpoint sections, learning-rate schedules and held-out evaluation. Re-exported from rlhf_dist.config."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default); configs are immutable;
    # NaN and infinity are refused in every float field (no setting here gives infinity a meaning).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclasses.dataclass(frozen=True)
class PathKind:
    """Marks a str field as a path the validation layer (rlhf_dist.config.validation) checks before anything runs."""

    kind: Literal["file", "output_dir"]


InputFile = Annotated[str, PathKind("file")]  # must be a readable file
OutputDir = Annotated[str, PathKind("output_dir")]  # a directory this process can create or write in


# Fields several sections share, each documented once (defaults stay with each section).
RunName = Annotated[str, Field(description="the run's name: the W&B run's name and the prefix of its Ray placement groups")]
RunDir = Annotated[OutputDir, Field(description="the run directory; one that already holds something is left alone and the "
                                                "run goes to OUTPUT_DIR-2, -3, ...")]
DType = Annotated[Literal["float32", "bfloat16", "float16"], Field(description="the models' weights dtype")]
AttnImplementation = Annotated[Literal["sdpa", "eager", "flash_attention_2"], Field(description="the attention kernel transformers uses")]
GradientCheckpointing = Annotated[bool, Field(description="recompute activations in the backward pass to save memory")]
ChatTemplate = Annotated[bool, Field(description="render each prompt as a user turn with the tokenizer's chat template")]
# Token-budget micro-batches (rlhf_dist/data/packing.py, docs/packing.md): none keeps micro-batches of a fixed count.
TokenBudget = Annotated[int | None, Field(ge=1, description="tokens per forward/backward on one rank")]


# The projections of the Llama and Qwen2 families (and most decoders after them): attention and MLP.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(Strict):
    """A LoRA adapter (peft) trained in place of the model's weights, which stay frozen (docs/lora.md)."""

    rank: int = Field(16, ge=1, le=512, description="the adapter's rank r (vLLM serves ranks up to 512)")
    alpha: float = Field(32.0, gt=0, description="the adapter's update is scaled by alpha / rank")
    dropout: float = Field(
        0.0, ge=0, lt=1,
        description="dropout on the adapter's input while training; above 0 the learners recompute old log-probs "
        "without it (a single on-policy update cannot take them from its own forward)",
    )
    target_modules: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1,
        description="names of the linear layers that get an adapter (the last part of their module names), checked "
        "against the model before anything starts",
    )
    path: str | None = Field(
        None,
        description="an adapter to start from: a peft directory (adapter_config.json, adapter_model.safetensors) whose "
        "rank, alpha and target modules are these; none: a fresh adapter (B = 0, so training starts at the model)",
    )


class RunOutput(Strict):
    """What every command's `run` section shares: where and how a run records itself."""

    name: RunName = "run"
    output_dir: RunDir = "runs/run"
    seed: int = Field(
        1, description="seeds the prompt order, every request's sampling and the workers' torch generators"
    )
    tensorboard: bool = Field(
        True, description="TensorBoard events in RUN_DIR/tensorboard/ (used when `loggers` is not set)"
    )
    progress_bar: bool = Field(
        True, description="a bar with ETA on a terminal; false, or no terminal: a progress line every minute"
    )
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] | None = Field(
        None, description="jsonl (always written), tensorboard, wandb; when set, replaces `tensorboard`"
    )
    wandb_project: str = Field("rlhf-dist", description="the W&B project (wandb is an optional extra)")


class LRSchedule(Strict):
    """Learning-rate schedule: warmup (in the stage's steps), then constant or a decay to min_ratio x lr."""

    kind: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="constant, or a linear or cosine decay after the warmup"
    )
    warmup_steps: int = Field(
        0, ge=0,
        description="the rate rises linearly over these steps (PPO steps in PPO, optimizer steps in the stages)",
    )
    min_ratio: float = Field(
        0.0, ge=0, le=1, description="linear and cosine decay to min_ratio x the rate at the last step"
    )
    total_steps: int | None = Field(
        None, ge=1,
        description="the schedule's length; default: the run's steps (`run.steps` in PPO, from the data size in the "
        "stages)",
    )


class EvalConfig(Strict):
    """Held-out evaluation through the rollout engines: every N steps, at the start and at the end."""

    prompts: InputFile = Field(
        description="JSONL or parquet, read as data.prompts is (chat template and length limit included)"
    )
    prompt_key: str = Field("prompt", description="the field holding the prompt")
    label_key: str | None = Field(None, description="a field passed to reward functions as `label`")
    every_n_steps: int = Field(0, ge=0, description="evaluate every N steps; 0: at the start and the end only")
    greedy: bool = Field(True, description="one greedy (temperature 0) response per prompt")
    n_samples: int = Field(
        0, ge=0, description="sampled responses per prompt (with the rollout's settings) for pass@k; 0: none"
    )
    k: list[int] = Field(default_factory=lambda: [1], description="pass@k reported for each k <= n_samples")
    pass_function: str | None = Field(
        None,
        description="a verifiable reward: a response is correct when this reward function (its name after the colon), "
        "or with an `env` this part of the environment's reward, gives at least pass_threshold; without it there is "
        "no pass@k, only mean rewards",
    )
    pass_threshold: float = Field(1.0, description="the pass_function value that counts as correct")

    @model_validator(mode="after")
    def _k_fits(self):
        for k in self.k:
            if k < 1 or (self.n_samples and k > self.n_samples):
                raise ValueError(f"eval.k: {k} must be between 1 and eval.n_samples ({self.n_samples})")
        if not self.greedy and not self.n_samples:
            raise ValueError("eval: set greedy: true and/or n_samples > 0; there is nothing to evaluate")
        return self


class ClusterConfig(Strict):
    address: str | None = Field(
        None,
        description="Ray address of an existing cluster, joined as given; none: start a local cluster on loopback",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto is CUDA where the driver sees CUDA, so a driver without GPUs steering a GPU cluster says "
        "cuda",
    )
    threads_per_actor: int = Field(1, ge=1, description="CPU only: torch threads in each worker process at start")
    phase_threads: bool = Field(
        True,
        description="CPU only: the actors of each phase split `phase_cores`, so a phase running alone uses them all; "
        "false: `threads_per_actor` throughout",
    )
    phase_cores: int | None = Field(
        None, ge=1, description="CPU only: cores to split per phase; none: the driver's cores"
    )
    node_gpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="GPUs on each node of the cluster the job is for, e.g. [8, 8]: `rlhf-dist plan` and every "
        "command's config check refuse pools that cannot be placed on them per node; empty: checked against Ray's "
        "nodes at start-up only",
    )
    gpu_memory_gb: float = Field(80, gt=0, description="memory per GPU, for `rlhf-dist plan`")
    host_memory_gb: float | None = Field(
        None, gt=0, description="host memory per node, for `rlhf-dist plan`; none: reported, not judged"
    )
    # DeepSpeed's shared-memory all-reduce kernel is JIT-compiled with g++ (30-50 s); gloo is enough.
    deepspeed_shm_comm: bool = Field(
        False, description="CPU only: DeepSpeed's shared-memory all-reduce instead of gloo's"
    )
    cpu_cores: dict[str, str] = Field(
        default_factory=dict,
        description='CPU only: pool -> the cores its processes may run on ("0", "2-3,6"), so pools do not share cores, '
        'e.g. {learn: "0", gen: "1"}',
    )


# The longest wait any deadline may name (115 days): beyond it the OS's and threading's timers overflow
# (a wait of 1e300 s raised OverflowError only after the actors had started).
MAX_WAIT_S = 1e7


class TimeoutConfig(Strict):
    actor_start_s: float = Field(
        300, gt=0, le=MAX_WAIT_S, description="placement groups ready, actors constructed, models loaded; joining a remote cluster"
    )
    rendezvous_s: float = Field(
        120, gt=0, le=MAX_WAIT_S, description="joining a process group (DeepSpeed's, the weight sync's): every rank reaches the store"
    )
    collective_s: float = Field(
        600, gt=0, le=MAX_WAIT_S, description="one collective (all-reduce, gather, broadcast) inside DeepSpeed's or the weight-sync "
        "group",
    )
    call_s: float = Field(1800, gt=0, le=MAX_WAIT_S, description="one remote call (generate, update, sync, ...)")


class CheckpointConfig(Strict):
    every_n_steps: int = Field(0, ge=0, description="a checkpoint every N steps; 0: none")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept; older ones are removed")


class Job(Strict):
    """Sections every command that starts actors shares."""

    cluster: ClusterConfig = Field(ClusterConfig(), description="where the job's Ray actors run, and CPU threads")
    timeouts: TimeoutConfig = Field(TimeoutConfig(), description="deadlines of every wait, in seconds")


class ResumableJob(Job):
    """Sections of the commands that train and checkpoint (PPO and the SFT/RM/DPO stages)."""

    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="how often to checkpoint, how many to keep")
    resume: str | None = Field(
        None,
        description="auto: continue from the newest complete checkpoint of this run.output_dir (or its -2, -3, ... "
        "siblings); or the path of one checkpoint directory",
    )
