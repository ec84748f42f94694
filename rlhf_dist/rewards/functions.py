"""Loading and calling configured reward functions ('package.module:function')."""
from __future__ import annotations

import importlib
import inspect
import math
import multiprocessing
import os
import time
from typing import Callable

from rlhf_dist.config import ConfigError, RewardFunction
from rlhf_dist.errors import RewardError
from rlhf_dist.rewards.pool import RewardPool, Watch, WorkerExited, call_all, result


def import_named(module_name: str, what: str):
    """The module a config names by dotted path ('package.module:attr'); a failure is one line naming `what`."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{what}: cannot import {module_name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed at import: say so in one line
        raise ConfigError(f"{what}: importing {module_name!r} failed: {type(e).__name__}: {e}") from None


def load_function(spec: RewardFunction) -> Callable[..., float]:
    module_name, _, attr = spec.name.partition(":")
    module = import_named(module_name, f"reward.functions {spec.name!r}")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward.functions {spec.name!r}: {module_name!r} has no function {attr!r}")
    return fn


def check_signature(spec: RewardFunction, fn: Callable, with_label: bool) -> None:
    """fn must accept (prompt, response[, label=...], **spec.kwargs), as it will be called."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: the call itself will tell
    try:
        sig.bind("prompt", "response", **({"label": None} if with_label else {}), **spec.kwargs)
    except TypeError as e:
        kw = "".join(f", {k}=..." for k in (["label"] if with_label else []) + list(spec.kwargs))
        raise ConfigError(f"reward.functions {spec.name!r}: cannot be called as {spec.name.rpartition(':')[2]}(prompt, response{kw}): {e}") from None


def label_use(fn: Callable) -> str:
    """'required', 'optional' or 'no': whether fn takes a `label` argument."""
    params = inspect.signature(fn).parameters
    if "label" in params:
        return "required" if params["label"].default is inspect.Parameter.empty else "optional"
    return "optional" if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else "no"


def chunk_size(calls: int, processes: int) -> int:
    """Calls per round trip to the pool: about two chunks per process."""
    return max(1, math.ceil(calls / (2 * processes)))


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
            check_signature(spec, fn, self.takes_label[-1])
        # Calls run in worker processes (started on first use): as many as the most concurrent function asks.
        self.pool = RewardPool(max((s.concurrency for s in specs), default=1), [s.name for s in specs])

    def __bool__(self) -> bool:
        return bool(self.fns)

    def __call__(self, prompts: list[str], responses: list[str], labels: list | None = None) -> list[float]:
        return [sum(row) for row in self.per_function(prompts, responses, labels)]

    def per_function(self, prompts: list[str], responses: list[str], labels: list | None = None) -> list[list[float]]:
        """[sample][function] weighted values."""
        return [[spec.weight * v for spec, v in zip(self.specs, row)] for row in self.values(prompts, responses, labels)]

    def values(self, prompts: list[str], responses: list[str], labels: list | None = None) -> list[list[float]]:
        """[sample][function] values as each function returned them (unweighted). `label` is passed only to
        functions that take it."""
        calls = [
            [(p, r, {"label": labels[i]} if takes_label and labels is not None else {}) for i, (p, r) in enumerate(zip(prompts, responses))]
            for takes_label in self.takes_label
        ]
        firsts = [None] * len(self.specs)
        if len(self.specs) > 1 and prompts:
            # The first attempt goes in one round trip per chunk for all the functions (the pool's cost is per
            # round trip: a format check alone cost as much through it as math-verify's extra work).
            outs = [[None] * len(prompts) for _ in self.specs]
            size = chunk_size(len(prompts), self.pool.processes)
            firsts = [(out, *got) for out, got in zip(outs, self._pass(self.specs, calls, range(len(prompts)), size, outs))]
        columns = [self._run(spec, c, first) for spec, c, first in zip(self.specs, calls, firsts)]
        return [list(row) for row in zip(*columns)]

    def _run(self, spec: RewardFunction, calls: list[tuple], first: tuple | None = None) -> list[float]:
        """All calls at once over the worker processes, in chunks (one round trip each), under one deadline per
        pass: timeout_s for each call the busiest process may run (so per-call timeouts never add up one after
        another across processes). Calls still running at the deadline are abandoned with their processes; the
        calls of a chunk that overran are run again one per chunk in the same attempt, so the one that hangs is
        the one named, not its chunk-mates. Failures are retried up to spec.retries times, then an error.
        `first`: the first attempt's (values, errors, calls to run again alone) when it ran with the other
        functions' calls."""
        out: list[float | None] = [None] * len(calls)
        errors: dict[int, str] = {}
        todo = list(range(len(calls)))
        for attempt in range(spec.retries + 1):
            if attempt == 0 and first is not None:
                out, errors, alone = first
            else:
                # About two chunks per process: a few round trips per batch instead of one per sample, with some
                # room to even out calls that take longer than others.
                size = chunk_size(len(todo), self.pool.processes)
                [(errors, alone)] = self._pass([spec], [calls], todo, size, [out])
            if alone:
                [(isolated, _)] = self._pass([spec], [calls], sorted(alone), 1, [out])
                errors = {**{i: e for i, e in errors.items() if i not in alone}, **isolated}
            todo = sorted(errors)
            if not todo:
                return out  # type: ignore[return-value]
        i = todo[0]
        message, _, trace = errors[i].partition("\n")
        err = RewardError(
            f"reward function {spec.name} failed on sample {i} after {spec.retries + 1} attempt(s): {message}"
            + (f" ({len(todo)} samples failed)" if len(todo) > 1 else "")
        )
        if trace:
            err.details = f"reward function {spec.name} on sample {i}, in its worker process:\n{trace.rstrip()}"
        raise err

    def _pass(self, specs: list[RewardFunction], calls: list[list[tuple]], todo, size: int, outs: list[list]) -> list[tuple[dict, set]]:
        """One pass over `todo` in chunks of `size`, each chunk one round trip that runs every function in `specs`
        on its samples, under the sum of their timeouts for each sample the busiest process runs. Fills `outs`
        (one list per function); returns per function (errors by sample, samples to run again one per chunk: those
        of a chunk that overran or was lost with its process, where several calls shared the round trip, so the
        one at fault can be named). An overrun or a lost call ends the pool's processes (a later pass starts fresh
        ones)."""
        pool = self.pool.get()
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        budget = sum(s.timeout_s for s in specs) * size * math.ceil(len(chunks) / self.pool.processes)
        deadline = time.monotonic() + budget
        env, names = dict(os.environ), [s.name for s in specs]
        # Watched from before the first call is sent: a worker that exits at once is seen, not waited on.
        watch = Watch(pool)
        pending = []
        for chunk in chunks:
            rows = [(calls[0][i][0], calls[0][i][1], [{**c[i][2], **s.kwargs} for c, s in zip(calls, specs)]) for i in chunk]
            pending.append((chunk, pool.apply_async(call_all, (names, rows, env))))
        shared = size > 1 or len(specs) > 1
        got = [({}, set()) for _ in specs]
        ended = False
        for chunk, res in pending:
            lost = False  # overran, or lost with a worker that exited
            try:
                results = result(res, deadline, watch)
            except multiprocessing.TimeoutError:
                lost = True
                texts = [f"timed out after {budget:g} s (reward.functions timeout_s={s.timeout_s:g} per call)" for s in specs]
                results = [[(None, t) for t in texts]] * len(chunk)
            except WorkerExited as e:  # its call is lost: an error now, not a wait for the deadline
                lost = True
                results = [[(None, str(e))] * len(specs)] * len(chunk)
            except Exception as e:  # noqa: BLE001 - e.g. a return value that cannot be sent back
                results = [[(None, f"{type(e).__name__}: {e}")] * len(specs)] * len(chunk)
            ended |= lost
            for i, row in zip(chunk, results):
                for out, (errors, alone), (value, error) in zip(outs, got, row):
                    if error is not None:
                        errors[i] = error
                    else:
                        out[i] = value
                    if lost and shared:
                        alone.add(i)
        if ended:
            self.pool.terminate(pool)  # the stuck calls end with their processes; calls beside a lost one too
        return got

    def deadline_s(self, n: int) -> float:
        """The longest scoring `n` samples can take before every function's own deadlines have ended it: each
        attempt a chunked pass and a pass one call per chunk, each up to timeout_s per call the busiest process
        runs."""
        procs = self.pool.processes
        per_pass = math.ceil(n / procs) + chunk_size(n, procs)
        return sum((s.retries + 1) * 2 * s.timeout_s * per_pass for s in self.specs)

    def close(self) -> None:
        self.pool.close()

    @property
    def names(self) -> list[str]:
        return [s.name.rpartition(":")[2] for s in self.specs]
