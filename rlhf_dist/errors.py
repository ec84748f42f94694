"""Errors that name the role, rank and operation, so a failed or stuck job says what it was waiting for."""
from __future__ import annotations

import time
from typing import Any, Sequence


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
    """ray.get on every ref with one deadline; on expiry or failure, the error names each unfinished label."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

    assert len(refs) == len(labels)
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            stuck = [labels[refs.index(r)] for r in pending]
            raise WaitTimeout(
                f"timed out after {timeout_s:.0f} s waiting for {what}: no answer from {', '.join(stuck)} "
                f"(raise timeouts.* in the config if this is expected to take longer)"
            )
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(left, 5.0))
    out = []
    for ref, label in zip(refs, labels):
        try:
            out.append(ray.get(ref))
        except (ActorDiedError, ActorUnavailableError) as e:
            raise WorkerDied(f"{label} died during {what}: {_first_line(e)}") from None
        except RayActorError as e:
            raise WorkerDied(f"{label} died during {what}: {_first_line(e)}") from None
        except RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise WorkerFailed(f"{label} failed during {what}: {type(cause).__name__}: {cause}") from cause
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
