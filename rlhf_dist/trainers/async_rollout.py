"""Asynchronous mode (`rollout.max_staleness: k > 0`): a rollout producer that runs ahead of the learners.

At the start of step s the engines hold weights version s-1; the producer submits generation for every step up
to s+k that is not yet in flight, so the engines generate while the learners train. A batch for step t is
generated with version >= t-1-k, hence trained at most k versions old. Weight syncs queue behind the engines'
in-flight generation (an engine actor runs one call at a time), so weights change only between batches.
A batch is scored on the producer's own thread as soon as it is generated, so scoring is hidden too.

Order is fixed by step number, never by arrival: batch t always takes the loader's t-th draw and the seed of
step t, so two runs with the same seed are the same run. Checkpoints record the loader position before the
oldest batch not yet trained: on resume those prompts are drawn again (discarded and re-queued), so every prompt
is used exactly as often as in an uninterrupted run.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from rlhf_dist.data.batch import reward_part_metrics, rollout_batch, throughput_metrics


def generation_seed(seed: int, step: int, round_: int) -> int:
    """The sampling seed of one generation round of one step (the same in both modes)."""
    return seed * 1_000_003 + step * 10_007 + round_


@dataclasses.dataclass
class Pending:
    step: int  # the step that will train on this batch
    idx: list[int]  # prompt index of every sample
    version: int  # weights version the engines held when it was submitted
    loader_state: dict  # loader position before this batch's prompts were drawn
    result: Future  # (generation, scores, reward parts, scoring seconds), finished on the producer's thread


class RolloutProducer:
    def __init__(self, cfg, roles, state, score):
        """`score(cfg, roles, state, idx, responses) -> (scores, parts)`: the loop's reward computation."""
        self.cfg, self.roles, self.state, self.score = cfg, roles, state, score
        self.k, self.n = cfg.rollout.max_staleness, cfg.rollout.n_samples_per_prompt
        self.queue: deque[Pending] = deque()
        self.next_step: int | None = None
        # One thread finishes batches in step order (waits for the engines, then scores) while the loop trains.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-producer")

    def fill(self, step: int) -> None:
        """Submit every batch up to step + k not yet in flight, with the weights the engines hold now."""
        if self.next_step is None:
            self.next_step = step
        while self.next_step <= min(step + self.k, self.cfg.run.steps):
            t, loader = self.next_step, self.state.loader
            before = copy.deepcopy(loader.state_dict())
            idx = [i for i in loader.next_batch() for _ in range(self.n)]
            seed = generation_seed(self.cfg.run.seed, t, 1)
            submitted = self.roles.submit_generate([self.state.prompt_ids[i] for i in idx], seed)
            result = self.pool.submit(self._finish, submitted, idx)
            self.queue.append(Pending(t, idx, self.roles.sync.version, before, result))
            self.next_step += 1

    def take(self, step: int, timing: dict) -> tuple[dict, dict]:
        """Step `step`'s batch (waiting for it if the engines are behind), scored, with its weights version."""
        self.fill(step)
        p = self.queue.popleft()
        if p.step != step:  # the queue is ordered by construction; anything else is a bug, not a slow engine
            raise RuntimeError(f"rollout producer: step {step} got the batch of step {p.step}")
        t0 = time.perf_counter()
        # The generate wait inside has timeouts.call_s, scoring its per-function deadlines; this bounds both.
        limit = 2 * self.cfg.timeouts.call_s
        try:
            gen, scores, parts, score_s = p.result.result(timeout=limit)
        except FutureTimeout:
            raise TimeoutError(f"rollout producer: the batch of step {step} was not generated and scored in {limit:g} s") from None
        timing["generate_wait"] = time.perf_counter() - t0
        # Engine time and scoring time, both mostly hidden behind the previous step's training.
        timing["generate"], timing["score"] = max(gen["engine_seconds"]), score_s
        tokens = sum(len(r) for r in gen["responses"])
        roll, metrics = rollout_batch(self.state.prompt_ids, p.idx, gen["responses"], gen["logprobs"],
                                      gen["finish_reasons"], scores, self.n)
        metrics.update({
            **throughput_metrics(tokens, timing["generate"]),
            "rollout/weights_version": float(p.version),
            # The learner holds version step-1 while it trains step `step`.
            "rollout/staleness": float(step - 1 - p.version),
        })
        metrics.update(reward_part_metrics(parts))
        return roll, metrics

    def _finish(self, submitted, idx: list[int]):
        gen = self.roles.gather_generate(submitted)
        t0 = time.perf_counter()
        scores, parts = self.score(self.cfg, self.roles, self.state, idx, gen["responses"])
        return gen, scores, parts, time.perf_counter() - t0

    def close(self) -> None:
        """Drop batches not started; one in progress ends with its deadline or when the engines are stopped."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def loader_state(self) -> dict:
        """For checkpoints: the position before the oldest batch not yet trained (its prompts are re-queued)."""
        return self.queue[0].loader_state if self.queue else self.state.loader.state_dict()
