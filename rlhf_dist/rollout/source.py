"""The one rollout source: the loop asks it for each step's batch with `take(step)`.

`max_staleness` k is how far the engines may run ahead. At the start of step s the engines hold weights
version s-1; the source submits generation for every step up to s+k not yet in flight, so with k > 0 the
engines generate while the learners train, and a batch for step t is generated with version >= t-1-k. With
k = 0 (synchronous mode) it submits only step s's batch, with the weights the learners just synced. Weight
syncs queue behind the engines' in-flight generation (an engine actor runs one call at a time), so weights
change only between batches.

One thread finishes batches in step order: it waits for the engines, then scores. The loop gets a batch as
soon as it is generated; its rewards are waited for after the learners' passes (`Rollouts.wait_scored`), so
scoring is hidden behind them, except where the scores decide the batch (dynamic sampling) or the reward
model's actors would share the passes' cores (a reward model in synchronous mode): then `take` waits.

Dynamic sampling (k = 0 only) is a filter on the same source: groups whose samples all score the same are set
aside and more prompts are drawn, up to `max_rounds` rounds; if still short, the batch is filled with set-aside
groups and the shortfall is reported.

Order is fixed by step number, never by arrival: batch t takes the loader's t-th draw and the seeds of step t,
so two runs with the same seed are the same run. Checkpoints record the loader position before the oldest
batch not yet trained: on resume those prompts are drawn again, so every prompt is used as often as in an
uninterrupted run.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from rlhf_dist.algorithms.advantages import informative_groups
from rlhf_dist.data.prompts import PromptSet
from rlhf_dist.rollout.multiturn import EnvSpec, run_round
from rlhf_dist.rollout.requests import generation_seed, trajectories
from rlhf_dist.rollout.trajectory import Rollouts, Trajectory, group_ids, groups_of, wait_for


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    seed: int
    steps: int
    group_size: int  # samples per prompt
    prompts_per_step: int
    max_staleness: int = 0
    dynamic_sampling: bool = False
    max_rounds: int = 1
    score_before_passes: bool = False  # a reward model in synchronous mode: its actors share the passes' cores
    call_s: float = 600.0  # the engines' call deadline (timeouts.call_s)
    env: EnvSpec | None = None  # an environment: multi-turn rounds (rlhf_dist.rollout.multiturn)

    def generate_limit(self) -> float:
        """How long one round's generation may take: a call per turn, each within call_s, with the trajectories'
        own deadline on top."""
        if self.env is None:
            return 2 * self.call_s
        return self.call_s * (self.env.limits.max_turns + 1) + self.env.limits.trajectory_timeout_s


def score_samples(scorer, samples: list[Trajectory], tokenizer, prompts: PromptSet) -> list[str]:
    """Set every sample's reward and reward parts; the decoded responses, for whoever shows them."""
    # A multi-turn sample's functions read its last turn (its final answer); the environment scored the others.
    last_turns = [slice(*spans[-1]) if (spans := s.spans()) else slice(0) for s in samples]
    texts = tokenizer.batch_decode([s.response_ids[t] for s, t in zip(samples, last_turns)], skip_special_tokens=True)
    labels = None if prompts.labels is None else [prompts.labels[s.prompt_index] for s in samples]
    totals, parts = scorer([prompts.texts[s.prompt_index] for s in samples], texts, labels, [len(s.response_ids) for s in samples])
    env_names = sorted({k for s in samples for k in s.env_rewards})  # every sample lists every part (0.0 if never given)
    if clash := set(env_names) & set(parts):
        raise RuntimeError(f"the environment's reward parts {sorted(clash)} have the names of the scorer's")
    for r, s in enumerate(samples):
        s.reward = float(totals[r]) + sum(s.env_rewards.values())
        s.reward_parts = {**{k: float(v[r]) for k, v in parts.items()}, **{k: s.env_rewards.get(k, 0.0) for k in env_names}}
    return texts


def env_rows(prompts: PromptSet, idx: list[int]) -> list[dict]:
    """What an environment's reset receives for each request: the prompt's text and label."""
    return [{"prompt": prompts.texts[i], "label": None if prompts.labels is None else prompts.labels[i]} for i in idx]


@dataclasses.dataclass(frozen=True)
class EnvRound:
    """What a multi-turn draw outside the source needs: the environment, the tokenizer, the round's deadline."""
    spec: EnvSpec
    tokenizer: object
    limit_s: float


def generate(engines, prompts: PromptSet, indices: list[int], group_size: int, seed: int, sampling: dict | None = None,
             env: EnvRound | None = None) -> tuple[list[Trajectory], float, dict]:
    """group_size samples of each prompt in `indices`, now, single-turn or (with `env`) episodes:
    (trajectories, engine seconds, round metrics)."""
    idx = groups_of(indices, group_size)
    groups = group_ids(len(idx), group_size)
    if env is not None:
        return run_round(engines, env.spec, env.tokenizer, env_rows(prompts, idx), idx, groups, seed, env.limit_s, sampling)
    handle = engines.submit_generate([prompts.ids[i] for i in idx], seed, sampling)
    gen = engines.gather_generate(handle)
    return trajectories(gen, prompts.ids, idx, groups, engines.version), max(gen["engine_seconds"]), {}


@dataclasses.dataclass
class Round:
    """One submitted draw of prompts: generated, then scored, on the source's thread."""
    step: int
    version: int  # the weights the engines held when it was submitted
    loader_state: dict  # the loader's position before its prompts were drawn
    generated: Future = dataclasses.field(default_factory=Future)  # (trajectories, engine seconds, round metrics)
    scored: Future = dataclasses.field(default_factory=Future)  # the scoring's own seconds


class RolloutSource:
    def __init__(self, spec: SourceSpec, engines, loader, prompts: PromptSet, tokenizer, scorer):
        """`engines`: submit_generate(prompts, seed, sampling) -> handle, gather_generate(handle) -> answers in
        request order (rlhf_dist.rollout.requests.merged), and `version`, the weights version last synced."""
        self.spec, self.engines, self.loader, self.prompts = spec, engines, loader, prompts
        self.tokenizer, self.scorer = tokenizer, scorer
        self.queue: deque[Round] = deque()
        self.next_step: int | None = None
        self.next_group = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-source")

    def take(self, step: int, timing: dict) -> Rollouts:
        """Step `step`'s batch, generated (waiting for the engines if they are behind); see the module notes for
        when its rewards are still being computed."""
        s = self.spec
        self._fill(step)
        first = self.queue.popleft()
        if first.step != step:  # the queue is ordered by construction; anything else is a bug, not a slow engine
            raise RuntimeError(f"rollout source: step {step} got the batch of step {first.step}")
        t0 = time.perf_counter()
        samples, engine_s, round_metrics = self._wait(first.generated, f"generating the batch of step {step}",
                                                      s.generate_limit() + self.score_limit())
        timing["generate_wait"] = time.perf_counter() - t0
        metrics = {"rollout/weights_version": float(first.version),
                   # The learners hold version step-1 while they train step `step`.
                   "rollout/staleness": float(step - 1 - first.version), **round_metrics}
        tokens, rounds, scoring = sum(len(x.response_ids) for x in samples), 1, first.scored
        if s.dynamic_sampling or s.score_before_passes:
            timing["score"] = self._wait(scoring, f"scoring the batch of step {step}", self.score_limit())
            scoring = None
        if s.dynamic_sampling:
            kept, spare = [], []
            while True:
                useful = informative_groups(torch.tensor([x.reward for x in samples]), s.group_size).tolist()
                groups = [samples[i : i + s.group_size] for i in range(0, len(samples), s.group_size)]
                kept += [g for g, u in zip(groups, useful) if u]
                spare += [g for g, u in zip(groups, useful) if not u]
                if len(kept) >= s.prompts_per_step or rounds == s.max_rounds:
                    break
                rounds += 1
                more = self._submit(step, rounds)
                samples, seconds, _ = self._wait(more.generated, f"generating round {rounds} of step {step}", s.generate_limit())
                engine_s += seconds
                tokens += sum(len(x.response_ids) for x in samples)
                timing["score"] += self._wait(more.scored, f"scoring round {rounds} of step {step}", self.score_limit())
            chosen = (kept + spare)[: s.prompts_per_step]
            metrics.update({"dynamic_sampling/rounds": rounds,
                            "dynamic_sampling/filled_with_uninformative": max(0, s.prompts_per_step - len(kept))})
            samples = [x for g in chosen for x in g]
        timing["generate"] = engine_s
        metrics.update({"rollout/tokens": float(tokens), "rollout/tokens_per_s": tokens / max(engine_s, 1e-9)})
        metrics["response/truncated_fraction"] = sum(x.truncated for x in samples) / len(samples)
        return Rollouts(samples, s.group_size, metrics, scoring)

    def _fill(self, step: int) -> None:
        """Submit every batch up to step + k not yet in flight, with the weights the engines hold now."""
        if self.next_step is None:
            self.next_step = step
        # Never past the run's last step ahead of time, but always the step asked for.
        while self.next_step <= max(step, min(step + self.spec.max_staleness, self.spec.steps)):
            self.queue.append(self._submit(self.next_step, 1))
            self.next_step += 1

    def _submit(self, step: int, round_: int) -> Round:
        before = copy.deepcopy(self.loader.state_dict())
        n = self.spec.group_size
        idx = groups_of(self.loader.next_batch(), n)
        groups = group_ids(len(idx), n, self.next_group)
        self.next_group += len(idx) // n
        seed = generation_seed(self.spec.seed, step, round_)
        # Multi-turn rounds call the engines from the source's thread, turn by turn; single-turn ones start now.
        handle = None if self.spec.env else self.engines.submit_generate([self.prompts.ids[i] for i in idx], seed)
        rnd = Round(step, self.engines.version, before)
        self.pool.submit(self._finish, rnd, handle, idx, groups, seed)
        return rnd

    def _finish(self, rnd: Round, handle, idx: list[int], groups: list[int], seed: int) -> None:
        try:
            if self.spec.env is None:
                gen = self.engines.gather_generate(handle)
                done = trajectories(gen, self.prompts.ids, idx, groups, rnd.version), max(gen["engine_seconds"]), {}
            else:
                done = run_round(self.engines, self.spec.env, self.tokenizer, env_rows(self.prompts, idx), idx, groups, seed,
                                 self.spec.generate_limit())
        except BaseException as e:  # noqa: BLE001 - raised again by the waiter
            rnd.generated.set_exception(e)
            rnd.scored.set_exception(e)
            return
        samples = done[0]
        rnd.generated.set_result(done)
        t0 = time.perf_counter()
        try:
            score_samples(self.scorer, samples, self.tokenizer, self.prompts)
        except BaseException as e:  # noqa: BLE001
            rnd.scored.set_exception(e)
            return
        rnd.scored.set_result(time.perf_counter() - t0)

    def score_limit(self) -> float:
        # Bounded by the reward functions' own deadlines (rlhf_dist.rewards.functions), with call_s to spare.
        return self.spec.call_s + self.scorer.deadline_s(self.spec.prompts_per_step * self.spec.group_size)

    @staticmethod
    def _wait(fut: Future, what: str, limit_s: float):
        return wait_for(fut, f"rollout source: {what}", limit_s)

    def close(self) -> None:
        """Drop batches not started; one in progress ends with its deadline or when the engines are stopped."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def loader_state(self) -> dict:
        """For checkpoints: the position before the oldest batch not yet trained (its prompts are drawn again)."""
        return self.queue[0].loader_state if self.queue else self.loader.state_dict()
