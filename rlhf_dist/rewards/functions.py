"""Loading and calling configured reward functions ('package.module:function')."""
from __future__ import annotations

import importlib
import math
from typing import Callable

from rlhf_dist.config import ConfigError, RewardFunction


def load_function(spec: RewardFunction) -> Callable[..., float]:
    module_name, _, attr = spec.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward.functions {spec.name!r}: cannot import {module_name!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward.functions {spec.name!r}: {module_name!r} has no function {attr!r}")
    return fn


class RuleRewards:
    """Weighted sum of the configured functions; a function that fails or returns a non-number is an error."""

    def __init__(self, specs: list[RewardFunction]):
        self.specs = specs
        self.fns = [load_function(s) for s in specs]

    def __bool__(self) -> bool:
        return bool(self.fns)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            total = 0.0
            for spec, fn in zip(self.specs, self.fns):
                try:
                    value = float(fn(p, r, **spec.kwargs))
                except Exception as e:  # noqa: BLE001 - re-raised with the function and sample named
                    raise RuntimeError(f"reward function {spec.name} failed on sample {i}: {type(e).__name__}: {e}") from e
                if not math.isfinite(value):
                    raise RuntimeError(f"reward function {spec.name} returned {value} on sample {i}")
                total += spec.weight * value
            out.append(total)
        return out
