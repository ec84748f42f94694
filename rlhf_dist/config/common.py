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


class RunOutput(Strict):
    """What every command's `run` section shares: where and how a run records itself."""

    name: str = "run"
    output_dir: OutputDir = "runs/run"
    seed: int = 1
    tensorboard: bool = True
    progress_bar: bool = True
    # jsonl (always), tensorboard, wandb; when set, replaces `tensorboard`
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] | None = None
    wandb_project: str = "rlhf-dist"


class LRSchedule(Strict):
    """Learning-rate schedule: warmup (in the stage's steps), then constant or a decay to min_ratio x lr."""

    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_ratio: float = Field(0.0, ge=0, le=1)
    total_steps: int | None = Field(None, ge=1)  # the decay's length; default: the run's steps


class EvalConfig(Strict):
    """Held-out evaluation through the rollout engines: every N steps, at the start and at the end."""

    prompts: InputFile  # JSONL or parquet, read as data.prompts is (chat template and length limit included)
    prompt_key: str = "prompt"
    label_key: str | None = None  # passed to reward functions as `label`
    every_n_steps: int = Field(0, ge=0)  # 0: at the start and the end only
    greedy: bool = True  # one greedy (temperature 0) response per prompt
    n_samples: int = Field(0, ge=0)  # sampled responses per prompt (rollout settings) for pass@k; 0: none
    k: list[int] = Field(default_factory=lambda: [1])  # pass@k reported for each k <= n_samples
    # A verifiable reward: a response is correct when this reward function (its name after the colon) gives at
    # least pass_threshold. Without it there is no pass@k, only mean rewards.
    pass_function: str | None = None
    pass_threshold: float = 1.0

    @model_validator(mode="after")
    def _k_fits(self):
        for k in self.k:
            if k < 1 or (self.n_samples and k > self.n_samples):
                raise ValueError(f"eval.k: {k} must be between 1 and eval.n_samples ({self.n_samples})")
        if not self.greedy and not self.n_samples:
            raise ValueError("eval: set greedy: true and/or n_samples > 0; there is nothing to evaluate")
        return self


class ClusterConfig(Strict):
    address: str | None = None  # Ray address of an existing cluster; None starts a local one
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_actor: int = Field(1, ge=1)  # CPU only: torch threads in each worker process at start
    phase_threads: bool = True  # CPU only: the actors of each phase split `phase_cores` (a phase alone uses them all)
    phase_cores: int | None = Field(None, ge=1)  # CPU only: cores to split per phase; None: the driver's affinity
    gpu_memory_gb: float = Field(80, gt=0)  # per GPU, for `rlhf-dist plan`
    host_memory_gb: float | None = Field(None, gt=0)  # per node, for `rlhf-dist plan` (None: reported, not judged)
    # CPU only: DeepSpeed's shared-memory all-reduce kernel is JIT-compiled with g++ (30-50 s); gloo is enough.
    deepspeed_shm_comm: bool = False
    # CPU only: pool -> the cores its processes may run on ("0", "2-3,6"), so pools do not share cores.
    cpu_cores: dict[str, str] = Field(default_factory=dict)


class TimeoutConfig(Strict):
    actor_start_s: float = Field(300, gt=0)  # placement groups ready, actors constructed, models loaded
    rendezvous_s: float = Field(120, gt=0)  # process-group rendezvous
    collective_s: float = Field(600, gt=0)  # one collective (all-reduce, broadcast) inside a group
    call_s: float = Field(1800, gt=0)  # one remote call (generate, update, sync, ...)


class CheckpointConfig(Strict):
    every_n_steps: int = Field(0, ge=0)  # 0 = no checkpoints
    keep_last: int = Field(2, ge=1)


class Job(Strict):
    """Sections every command that starts actors shares."""

    cluster: ClusterConfig = ClusterConfig()
    timeouts: TimeoutConfig = TimeoutConfig()


class ResumableJob(Job):
    """Sections of the commands that train and checkpoint (PPO and the SFT/RM/DPO stages)."""

    checkpoint: CheckpointConfig = CheckpointConfig()
    # "auto": continue from the newest complete checkpoint of this run.output_dir (or its -2, -3, ... siblings);
    # or the path of one checkpoint directory.
    resume: str | None = None
