"""Learning-rate schedules: a pure multiplier function and the torch scheduler DeepSpeed steps.

DeepSpeed steps the scheduler once per optimizer step (at each gradient-accumulation boundary) and saves its
state in every checkpoint, so a resumed run continues the schedule where it stopped.
"""
from __future__ import annotations

import dataclasses
import math

KINDS = ("constant", "linear", "cosine")


def lr_multiplier(step: int, total: int, kind: str = "constant", warmup: int = 0, min_ratio: float = 0.0) -> float:
    """The factor on the base learning rate for optimizer step `step` (0-based) of `total`.

    Warmup rises linearly to 1 over `warmup` steps (the first step already trains, at 1/warmup). Then
    `linear` and `cosine` decay from 1 to `min_ratio` at the last step; `constant` stays at 1.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; one of {', '.join(KINDS)}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - 1 - warmup)  # the last step (total - 1) reaches min_ratio exactly
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class Multiplier:
    """A picklable callable for LambdaLR (its fields go into the scheduler's state_dict)."""

    total: int
    kind: str
    warmup: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.total, self.kind, self.warmup, self.min_ratio)


def make_scheduler(optimizer, schedule, total_steps: int, steps_per_unit: int = 1):
    """A LambdaLR over optimizer steps. `schedule` (an LRSchedule config) counts warmup in the stage's own
    steps (PPO steps for PPO, optimizer steps for SFT/RM/DPO); `steps_per_unit` converts them. A resumed
    run continues the schedule its checkpoint holds. `schedule` None: a constant rate."""
    from torch.optim.lr_scheduler import LambdaLR

    if schedule is None:
        return LambdaLR(optimizer, Multiplier(total_steps * steps_per_unit, "constant", 0, 0.0))
    total = schedule.total_steps or total_steps
    fn = Multiplier(total * steps_per_unit, schedule.kind, schedule.warmup_steps * steps_per_unit, schedule.min_ratio)
    return LambdaLR(optimizer, fn)
