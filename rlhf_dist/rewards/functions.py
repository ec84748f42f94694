"""Loading and calling configured reward functions ('package.module:function')."""
from __future__ import annotations

import importlib
import inspect
import math
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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
        """[sample][function] weighted values. `label` is passed only to functions that take it."""
        columns = []
        for spec, fn, takes_label in zip(self.specs, self.fns, self.takes_label):
            calls = [
                (p, r, {"label": labels[i]} if takes_label and labels is not None else {})
                for i, (p, r) in enumerate(zip(prompts, responses))
            ]
            columns.append([spec.weight * v for v in self._run(spec, fn, calls)])
        return [list(row) for row in zip(*columns)]

    def _run(self, spec: RewardFunction, fn: Callable, calls: list[tuple]) -> list[float]:
        """Each call in a thread with spec.timeout_s; failures retried up to spec.retries times, then an error."""
        pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="reward")
        try:
            out: list[float | None] = [None] * len(calls)
            errors: dict[int, str] = {}
            todo = list(range(len(calls)))
            for _attempt in range(spec.retries + 1):
                futures = {i: pool.submit(fn, calls[i][0], calls[i][1], **calls[i][2], **spec.kwargs) for i in todo}
                errors = {}
                for i, fut in futures.items():
                    try:
                        value = float(fut.result(timeout=spec.timeout_s))
                    except FutureTimeout:
                        errors[i] = f"timed out after {spec.timeout_s:g} s (reward.functions timeout_s)"
                        continue
                    except Exception as e:  # noqa: BLE001 - reported with the function and sample named
                        errors[i] = f"{type(e).__name__}: {e}"
                        continue
                    if not math.isfinite(value):
                        errors[i] = f"returned {value}"
                        continue
                    out[i] = value
                todo = sorted(errors)
                if not todo:
                    return out  # type: ignore[return-value]
        finally:
            # A stuck call's thread cannot be stopped: the pool is not waited on, so errors are raised now.
            pool.shutdown(wait=False, cancel_futures=True)
        i = todo[0]
        raise RewardError(
            f"reward function {spec.name} failed on sample {i} after {spec.retries + 1} attempt(s): {errors[i]}"
            + (f" ({len(todo)} samples failed)" if len(todo) > 1 else "")
        )

    @property
    def names(self) -> list[str]:
        return [s.name.rpartition(":")[2] for s in self.specs]
