"""Errors that name the role, rank and operation, so a failed or stuck job says what it was waiting for."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config problem, worded for the user: names the field and what is wrong."""


class RLHFError(RuntimeError):
    # Where it came from (a worker's traceback): written to the run's train.log, not to the console line.
    details: str | None = None


@contextlib.contextmanager
def phase(name: str):
    """Marks an exception raised inside with the phase a worker was in ("engine warm-up generation"), so the
    driver's error names what was running, not only the call it waited on. The innermost phase wins; the mark
    travels with the exception through Ray (it is in the exception's __dict__, which pickling keeps)."""
    try:
        yield
    except Exception as e:
        if getattr(e, "rlhf_phase", None) is None:
            try:
                e.rlhf_phase = name
            except AttributeError:  # an exception type without a __dict__
                pass
        raise


class WaitTimeout(RLHFError):
    pass


class WorkerDied(RLHFError):
    pass


class NodeLost(WorkerDied):
    """A node of the job is gone (its raylet stopped): the ranks it held died with it."""


class WorkerFailed(RLHFError):
    pass


class WeightSyncError(RLHFError):
    pass


class RewardError(RLHFError):
    pass


def wait_all(refs: Sequence[Any], labels: Sequence[str], what: str, timeout_s: float) -> list[Any]:
    """ray.get on every ref with one deadline. The first failure is raised at once (a dead rank's peers may
    be blocked in a collective and would otherwise hold the wait until the deadline); on expiry the error
    names every label still pending."""
    import ray

    assert len(refs) == len(labels)
    deadline = time.monotonic() + timeout_s
    label_of = {ref: label for ref, label in zip(refs, labels)}
    results: dict = {}
    pending = list(refs)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            stuck = [label_of[r] for r in pending]
            raise WaitTimeout(
                f"timed out after {timeout_s:.0f} s waiting for {what}: no answer from {', '.join(stuck)} "
                f"(raise timeouts.* in the config if this is expected to take longer)"
            )
        ready, pending = ray.wait(pending, num_returns=1, timeout=min(left, 5.0))
        for ref in ready:
            results[ref] = _get(ref, label_of[ref], what)
    return [results[r] for r in refs]


def _get(ref, label: str, what: str):
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayActorError as e:  # includes ActorDiedError and ActorUnavailableError
        raise WorkerDied(f"{label} died during {what}: {_first_line(e)}") from None
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        running = getattr(cause, "rlhf_phase", None)
        where = what if running in (None, what) else f"{running} (in {what})"
        if isinstance(cause, RLHFError):
            err = type(cause)(f"{label}: {cause}")
        else:
            err = WorkerFailed(f"{label} failed during {where}: {type(cause).__name__}: {_first_line(cause)}")
        # Ray's text of the remote traceback: file, line and call in the worker that raised.
        remote = getattr(e, "traceback_str", None) or str(e)
        inner = getattr(cause, "details", None)  # e.g. a reward function's own traceback, from its process
        err.details = (f"{inner}\n\n" if inner else "") + f"{label}, {where}, raised in the worker:\n{remote.rstrip()}"
        raise err from cause


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
