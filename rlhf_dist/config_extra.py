"""Configuration models the run's sections share with the stage configs: the strict base, learning-rate
schedules and held-out evaluation. Re-exported from rlhf_dist.config."""
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
    """Marks a str field as a path the validation layer (rlhf_dist.validation) checks before anything runs."""

    kind: Literal["file", "output_dir"]


InputFile = Annotated[str, PathKind("file")]  # must be a readable file
OutputDir = Annotated[str, PathKind("output_dir")]  # a directory this process can create or write in


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
