"""Reward calls in worker processes that can be abandoned: a call that never returns is ended with its
process (the pool is terminated), so it cannot keep the command alive; CPU-heavy rewards also run in
parallel across cores instead of behind one interpreter lock.

Workers are forked from a forkserver (not from the driver, which holds Ray and torch threads) and import the
reward's module by name, so nothing but the function name and plain arguments crosses the process boundary.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import numbers
import os
import signal
import sys
import threading
import time

_FUNCTIONS: dict = {}


def resolve(name: str):
    """'package.module:function' -> the function (cached per process)."""
    if name not in _FUNCTIONS:
        module, _, attr = name.partition(":")
        _FUNCTIONS[name] = getattr(importlib.import_module(module), attr)
    return _FUNCTIONS[name]


def checked_value(value) -> tuple[float | None, str | None]:
    """A reward must be a finite real number: a bool or a string is an error, never coerced."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"returned {type(value).__name__} {value!r:.60}, not a number"
    if not math.isfinite(value):
        return None, f"returned {float(value)}"
    return float(value), None


def call_all(names: list[str], rows: list[tuple[str, str, list[dict]]], env: dict) -> list[list[tuple[float | None, str | None]]]:
    """Runs in a worker: every function in `names` on each (prompt, response, kwargs per function): per row, per
    function, (value, None) or (None, error text); exceptions never cross as objects. Calls come in chunks: one
    round trip (and one copy of `env`) per chunk for all the functions, not per sample or per function. `env` is
    the caller's environment now (workers are forked from a server started earlier, e.g. before an API key was
    set)."""
    if env != os.environ:
        os.environ.clear()
        os.environ.update(env)
    return [[_one(name, prompt, response, kw) for name, kw in zip(names, kwargs)] for prompt, response, kwargs in rows]


TRACEBACK_CHARS = 8000  # of a failing reward call's traceback, kept for the run's log


def _one(name: str, prompt: str, response: str, kwargs: dict) -> tuple[float | None, str | None]:
    """(value, None) or (None, error): the error's first line is the message; the lines after it are the
    traceback (text, bounded), which the run's log shows."""
    try:
        return checked_value(resolve(name)(prompt, response, **kwargs))
    except Exception as e:  # noqa: BLE001 - reported with the function and sample named by the caller
        import traceback

        message = " ".join(f"{type(e).__name__}: {str(e)[:300]}".split())  # one line
        return None, f"{message}\n{traceback.format_exc()[-TRACEBACK_CHARS:]}"


class WorkerExited(Exception):
    """A worker process ended while calls were in flight; which of them it held is unknown."""

    def __init__(self, exitcode: int):
        if exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"killed by signal {-exitcode}"
        else:
            how = f"exit code {exitcode}"
        super().__init__(f"a reward worker process exited ({how}) while this call or one beside it ran")


class Watch:
    """The pool's worker processes, watched for one that exits. Taken before calls are submitted: a worker that
    ends at once (before a later look at the pool) is still seen, even after the pool has joined it, removed it
    and started a replacement; replacements are added on each look, since they may take the calls too."""

    def __init__(self, pool):
        self._pool = pool
        self._seen: dict[int, object] = {}
        self.look()

    def look(self) -> int | None:
        """The exit code of a watched worker that has ended, or None."""
        for w in list(self._pool._pool):  # the only place multiprocessing's pool exposes its workers
            self._seen.setdefault(id(w), w)
        return next((w.exitcode for w in self._seen.values() if w.exitcode is not None), None)


def result(res, deadline: float, watch: Watch):
    """`res`'s value once ready, waiting until `deadline` (multiprocessing.TimeoutError then); WorkerExited as
    soon as a watched worker has ended, since the call it held will never complete."""
    while True:
        left = deadline - time.monotonic()
        res.wait(max(0.0, min(left, 0.05)))
        if res.ready():
            return res.get()
        ended = watch.look()
        if ended is not None:
            raise WorkerExited(ended)
        if left <= 0:
            raise multiprocessing.TimeoutError


def _warm(names: list[str]) -> None:
    for name in names:
        try:
            resolve(name)
        except Exception:  # noqa: BLE001 - the call itself reports it
            pass


@contextlib.contextmanager
def _main_hidden():
    """Workers import rewards by name and never need the caller's __main__; multiprocessing would run it again
    in each worker (a script without a __main__ guard would recurse, and stdin or a notebook cannot be found),
    so the workers are started with it out of sight."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if "__file__" in saved:
            del main.__file__
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class RewardPool:
    """A process pool started on first use and terminated (not joined) when a call overruns its deadline."""

    def __init__(self, processes: int, names: list[str]):
        self.processes, self.names = processes, names
        self._pool = None
        # The step's scoring may run on a helper thread; a batch abandoned by a failed step may still be
        # waiting on it while the next one starts.
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                # The forkserver imports the reward modules once and every worker is forked with them loaded
                # (not the caller's __main__, the default).
                ctx.set_forkserver_preload([__name__] + sorted({n.partition(":")[0] for n in self.names}))
                with _main_hidden():
                    self._pool = ctx.Pool(self.processes, initializer=_warm, initargs=(self.names,))
            return self._pool

    def terminate(self, pool=None) -> None:
        """Ends the workers; with `pool`, only if that is still the current pool (a caller whose calls
        overran never ends the fresh pool a later batch started)."""
        with self._lock:
            if self._pool is not None and (pool is None or pool is self._pool):
                self._pool.terminate()
                self._pool = None

    close = terminate

    def __del__(self):
        # A scorer dropped without close() must not leave its workers behind until the interpreter exits.
        try:
            self.terminate()
        except Exception:  # noqa: BLE001 - at interpreter shutdown the pool may be half torn down
            pass
