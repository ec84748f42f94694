"""Loading and calling configured reward functions ('package.module:function')."""
from __future__ import annotations

import importlib
import inspect
import math
from typing import Callable

from rlhf_dist.config import ConfigError, RewardFunction
from rlhf_dist.errors import RewardError


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


def label_use(fn: Callable) -> str:
    """'required', 'optional' or 'no': whether fn takes a `label` argument."""
    params = inspect.signature(fn).parameters
    if "label" in params:
        return "required" if params["label"].default is inspect.Parameter.empty else "optional"
    return "optional" if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else "no"


class RuleRewards:
    """Weighted sum of the configured functions; a function that fails or returns a non-number is an error.

    Functions that take a `label` argument get the sample's label (data.label_key); the others do not.
    """

    def __init__(self, specs: list[RewardFunction], has_labels: bool = False):
        self.specs = specs
        self.fns = [load_function(s) for s in specs]
        self.takes_label = []
        for spec, fn in zip(specs, self.fns):
            use = label_use(fn)
            if use == "required" and not has_labels:
                raise ConfigError(f"reward.functions {spec.name!r} needs a `label`: set data.label_key to the data field holding it")
            self.takes_label.append(use != "no" and has_labels)

    def __bool__(self) -> bool:
        return bool(self.fns)

    def __call__(self, prompts: list[str], responses: list[str], labels: list | None = None) -> list[float]:
        return [sum(row) for row in self.per_function(prompts, responses, labels)]

    def per_function(self, prompts: list[str], responses: list[str], labels: list | None = None) -> list[list[float]]:
        """[sample][function] weighted values. `label` is passed only when the data has labels."""
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            row = []
            for spec, fn, takes_label in zip(self.specs, self.fns, self.takes_label):
                extra = {"label": labels[i]} if takes_label and labels is not None else {}
                try:
                    value = float(fn(p, r, **extra, **spec.kwargs))
                except Exception as e:  # noqa: BLE001 - re-raised with the function and sample named
                    raise RewardError(f"reward function {spec.name} failed on sample {i}: {type(e).__name__}: {e}") from e
                if not math.isfinite(value):
                    raise RewardError(f"reward function {spec.name} returned {value} on sample {i}")
                row.append(spec.weight * value)
            out.append(row)
        return out

    @property
    def names(self) -> list[str]:
        return [s.name.rpartition(":")[2] for s in self.specs]
