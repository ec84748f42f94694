"""Multi-turn rounds: every trajectory advances on its own, as soon as its environment has answered.

One driver thread per round. Whenever no engine call is in flight and some episodes wait for their next turn,
all of them go to the engines in one call (the engines batch them; an engine actor runs one call at a time,
so a second call would only queue), after waiting up to GATHER_S for others whose environment is still
answering. Meanwhile each episode whose turn came back runs its environment step or
tool on a thread of its own, so a slow tool delays its own episode and nobody else's. Episode threads are
daemons: an environment that never returns is abandoned at its trajectory's deadline (finish reason
`timeout`) and cannot keep the process alive; tools run in child processes that are killed at theirs
(rlhf_dist.envs.sandbox).

Seeds: a round has the seed of the rule in rlhf_dist.rollout.requests; the sample at position j samples its
turn t with `seed + j + t * TURN_SEED_OFFSET`, whichever call or engine it lands in (its r-th restart, with
check_template=restart, adds `r * RESTART_SEED_OFFSET`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

from rlhf_dist.envs.episode import Episode, EpisodeLimits
from rlhf_dist.errors import WaitTimeout

TURN_SEED_OFFSET = 104_729
RESTART_SEED_OFFSET = 1000 * TURN_SEED_OFFSET  # a restarted sample's seeds: far from any turn's of the first try
TEMPLATE_RESTARTS = 2
# How long an episode whose environment has answered waits for others still stepping before its next turn goes
# to the engines alone: long enough to batch fast environments, short beside any tool worth waiting on.
GATHER_S = 0.05


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    env_class: type
    kwargs: dict
    limits: EpisodeLimits
    name: str = "env"
    concurrency: int = 16  # environment steps and tool calls running at once


def in_thread(fn, *args, gate: threading.Semaphore | None = None) -> Future:
    """fn(*args) on a daemon thread (never joined at exit), as a future."""
    fut: Future = Future()

    def run():
        try:
            if gate is not None:
                gate.acquire()
            try:
                fut.set_result(fn(*args))
            finally:
                if gate is not None:
                    gate.release()
        except BaseException as e:  # noqa: BLE001 - raised again by whoever waits
            fut.set_exception(e)

    threading.Thread(target=run, daemon=True, name="env-step").start()
    return fut


def run_round(engines, spec: EnvSpec, tokenizer, rows: list[dict], indices: list[int], groups: list[int], seed: int,
              limit_s: float, sampling: dict | None = None, gather_s: float = GATHER_S) -> tuple[list, float, dict]:
    """One episode per request (row r answers prompt indices[r], group groups[r]): (trajectories in request
    order, engine seconds, metrics). `limit_s`: the round's own deadline (a bug, not a slow tool, would reach it).
    `sampling`: settings that replace the rollout's for every turn (evaluation: greedy is temperature 0).
    `gather_s`: how long a ready episode waits for others still stepping (infinite: per-turn batches, the
    benchmark's comparison)."""
    end = time.monotonic() + limit_s
    gate = threading.Semaphore(spec.concurrency)
    positions = list(range(len(rows)))
    eps: list[Episode] = [None] * len(rows)  # type: ignore[list-item]
    engine_s, restarts = 0.0, 0
    for attempt in range(1 + (TEMPLATE_RESTARTS if spec.limits.check_template == "restart" else 0)):
        # check_template=restart: a sample whose ids differ from a full render is sampled again (new seeds);
        # one that still differs after TEMPLATE_RESTARTS tries is kept, and counted as a mismatch.
        todo = positions if attempt == 0 else [j for j in positions if eps[j].mismatch]
        if not todo:
            break
        restarts += len(todo) if attempt else 0
        new = [Episode(spec.env_class(**spec.kwargs), tokenizer, spec.limits, indices[j], groups[j], rows[j], spec.name)
               for j in todo]
        try:
            _reset(new, gate, spec)
            engine_s += _drive(engines, new, todo, seed + attempt * RESTART_SEED_OFFSET, gate, end, limit_s, sampling or {},
                               gather_s)
            for ep in new:
                ep.check_template()
        finally:
            for ep in new:
                ep.close()
        for j, ep in zip(todo, new):
            eps[j] = ep
    metrics = round_metrics(eps)
    if spec.limits.check_template == "restart":
        metrics["rollout/template_restarts"] = float(restarts)
    return [ep.trajectory() for ep in eps], engine_s, metrics


def _reset(eps: list[Episode], gate, spec: EnvSpec) -> None:
    resets = [in_thread(ep.reset, gate=gate) for ep in eps]
    for ep, f in zip(eps, resets):
        try:
            f.result(timeout=max(0.0, ep.deadline - time.monotonic()))
        except TimeoutError:
            raise WaitTimeout(f"env {spec.name}: reset of prompt {ep.prompt_index} did not return within "
                              f"env.trajectory_timeout_s={spec.limits.trajectory_timeout_s:g}") from None


def _drive(engines, eps: list[Episode], positions: list[int], seed: int, gate, end: float, limit_s: float,
           override: dict, gather_s: float) -> float:
    position = {id(ep): j for j, ep in zip(positions, eps)}
    ready: dict[int, tuple[Episode, float]] = {id(ep): (ep, time.monotonic()) for ep in eps}  # -> (episode, ready since)
    stepping: dict[Future, Episode] = {}
    call: tuple[Future, list[Episode], int] | None = None
    engine_s = 0.0
    while True:
        now = time.monotonic()
        if now > end:
            raise WaitTimeout(f"multi-turn round: not done in {limit_s:g} s")
        for f, ep in list(stepping.items()):
            if now > ep.deadline:  # abandoned: its thread's late answer changes nothing (Episode.env_turn)
                ep.finish("timeout")
                del stepping[f]
        for key, (ep, _) in list(ready.items()):
            if now > ep.deadline:
                ep.finish("timeout")
            elif ep.room() < 1:
                ep.finish("length")
            if ep.done:
                del ready[key]
        oldest = min((t for _, t in ready.values()), default=now)
        # Episodes whose environment answered go together, unless one has waited GATHER_S for the others.
        if call is None and ready and (not stepping or now - oldest >= gather_s):
            batch = [ep for ep, _ in ready.values()]
            ready.clear()
            seeds = [seed + position[id(ep)] + ep.turns * TURN_SEED_OFFSET for ep in batch]
            sampling = [{**override, "max_tokens": ep.room()} for ep in batch]
            prompts = [ep.context for ep in batch]
            call = (in_thread(lambda: engines.gather_generate(engines.submit_generate(prompts, seeds, sampling))),
                    batch, engines.version)
        if call is None and not stepping and not ready:
            return engine_s
        futures = [*stepping, *([call[0]] if call else [])]
        soonest = min([ep.deadline for ep in stepping.values()] + [end] + ([oldest + gather_s] if ready and call is None else []))
        done, _ = wait(futures, timeout=max(0.001, soonest - time.monotonic()), return_when=FIRST_COMPLETED)
        if call is not None and call[0] in done:
            fut, batch, version = call
            call = None
            gen = fut.result()  # an engine error ends the round (the engines' own deadline bounds the call)
            if len(gen["responses"]) != len(batch):
                raise RuntimeError(f"the engines answered {len(gen['responses'])} of {len(batch)} requests")
            engine_s += max(gen["engine_seconds"])
            for ep, ids, lps, fin in zip(batch, gen["responses"], gen["logprobs"], gen["finish_reasons"]):
                text = ep.add_turn(list(ids), list(lps), fin, version)
                if text is not None:
                    stepping[in_thread(ep.env_turn, text, gate=gate)] = ep
        for f in done:
            ep = stepping.pop(f, None)
            if ep is None:
                continue
            f.result()  # an environment's own bug ends the round, with its message
            if not ep.done:
                ready[id(ep)] = (ep, time.monotonic())


def round_metrics(eps: list[Episode]) -> dict:
    n = max(1, len(eps))
    return {
        "rollout/turns_mean": sum(e.turns for e in eps) / n,
        "rollout/tool_calls_mean": sum(e.tool_calls for e in eps) / n,
        "rollout/tool_errors": float(sum(e.tool_errors for e in eps)),
        "rollout/tool_timeouts": float(sum(e.tool_timeouts for e in eps)),
        "rollout/trajectory_timeouts": float(sum(e.finish_reason == "timeout" for e in eps)),
        "rollout/env_seconds": sum(e.env_seconds for e in eps),
        "rollout/template_mismatches": float(sum(e.mismatch for e in eps)),
    }
