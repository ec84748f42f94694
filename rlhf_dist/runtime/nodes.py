"""A failed call, explained: did a rank die, and did its node go with it?

When a node's raylet stops, the ranks on it become unreachable at once (Ray: the actor is "unavailable") and
their peers' collectives fail (gloo: connection closed), but Ray declares the node dead only when its health
checks have failed, about 15 s later with Ray's defaults. So after a failure every rank is asked whether it is
there (a short `ready` call); a rank that is gone on a node Ray still lists alive is waited for, up to
NODE_VERDICT_S, until Ray says whether the node died. The answer names the node and every rank of the job it
held, so the run can restart them elsewhere or stop with a resume command (runtime/scaffold.py)."""
from __future__ import annotations

import time

from rlhf_dist.errors import NodeLost, WorkerDied

PING_S = 10.0  # a rank that answers `ready` within this is there (calls that failed have returned)
NODE_VERDICT_S = 60.0  # Ray's health checks declare a stopped node dead within about 15 s (defaults)


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def held_by_node(placement: dict[str, list[dict]]) -> dict[str, list[str]]:
    """node id -> the job's ranks there ("rollout rank 1"), from Roles.placement()."""
    out: dict[str, list[str]] = {}
    for role, ranks in placement.items():
        for r in ranks:
            for node in dict.fromkeys(r["nodes"]):
                out.setdefault(node, []).append(f"{role} rank {r['rank']}")
    return out


def gone_ranks(groups: dict, deadline_s: float = PING_S) -> dict[str, bool]:
    """label -> True when the rank cannot be reached (its node may be going down), False when Ray says it died;
    ranks that answer are left out."""
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

    refs = {}
    for g in groups.values():
        for label, actor, method in g.probes():
            refs[label] = getattr(actor, method).remote() if method != "call" else actor.call.remote(g.role, "ready")
    gone: dict[str, bool] = {}
    end = time.monotonic() + deadline_s
    for label, ref in refs.items():
        try:
            ray.get(ref, timeout=max(0.1, end - time.monotonic()))
        except ActorUnavailableError:
            gone[label] = True
        except RayActorError:
            gone[label] = False
        except GetTimeoutError:
            pass  # busy (still in a call of its own), not gone
        except Exception:  # noqa: BLE001 - a rank that answered, with an error of its own, is there
            pass
    return gone


def explain(error: Exception, groups: dict, placement: dict, log=print) -> Exception:
    """`error` again, or a WorkerDied naming the rank that is gone (a peer's failure was only its symptom), or a
    NodeLost naming the node and the ranks it held."""
    t0 = time.monotonic()
    held = held_by_node(placement)
    gone = gone_ranks(groups)
    if not gone and not held.keys() - alive_nodes():
        return error
    node_of = {label: node for node, labels in held.items() for label in labels}
    waiting = {node_of[label.split(" seat")[0]] for label, unreachable in gone.items() if unreachable and label.split(" seat")[0] in node_of}
    deadline = time.monotonic() + NODE_VERDICT_S
    while True:
        dead = held.keys() - alive_nodes()
        if dead or not waiting - dead or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if dead:
        parts = [f"node {n[:12]} (it held {', '.join(held[n])})" for n in sorted(dead)]
        lost = NodeLost(f"lost {'; '.join(parts)}, noticed {time.monotonic() - t0:.1f} s after the failed call "
                        f"({_first(error)})")
        lost.nodes = sorted(dead)
        return lost
    if waiting:
        return WorkerDied(f"{', '.join(sorted(gone))} cannot be reached, though Ray still lists the node alive after "
                          f"{NODE_VERDICT_S:.0f} s ({_first(error)})")
    if isinstance(error, WorkerDied):
        return error
    return WorkerDied(f"{', '.join(sorted(gone))} died ({_first(error)})")


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
