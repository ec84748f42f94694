"""Errors that name the role, rank and operation, so a failed or stuck job says what it was waiting for."""
from __future__ import annotations

import time
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config problem, worded for the user: names the field and what is wrong."""


class RLHFError(RuntimeError):
    pass


class WaitTimeout(RLHFError):
    pass


class WorkerDied(RLHFError):
    pass


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
        if isinstance(cause, RLHFError):
            raise type(cause)(f"{label}: {cause}") from cause
        raise WorkerFailed(f"{label} failed during {what}: {type(cause).__name__}: {cause}") from cause


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
