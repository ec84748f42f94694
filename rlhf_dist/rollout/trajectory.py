"""The rollout type: what engines produce, rewards fill in and learners read, one sample at a time.

A trajectory is a prompt and everything after it. `response_ids` holds every token after the prompt: in a
single-turn rollout, the tokens one engine call sampled; in a multi-turn one, the generated spans with the
tokens between them (tool output, a user's next turn) that the policy did not sample. `loss_mask` marks, per
response token, whether it was sampled (1: trained on, with its engine log-prob) or inserted (0: no loss, no
log-prob). Samples of one prompt share a `group` id; the group estimators read groups by that id.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from rlhf_dist.data.batch import build_batch, pad_rows
from rlhf_dist.errors import WaitTimeout
from rlhf_dist.rollout.finish import UNFINISHED, truncated_flags


@dataclasses.dataclass
class Trajectory:
    prompt_index: int  # row of the prompt in its dataset
    group: int  # samples of one prompt in one draw share it
    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]  # per response token: 1 sampled by the policy, 0 inserted between turns
    logprobs: list[float]  # per response token: the engine's log-prob where sampled, 0.0 where inserted
    finish_reason: str  # "stop" (EOS, a stop string or token; an environment's done), "length" (a token or turn limit) or "timeout"
    weights_version: int  # the weights the engine held when it sampled
    reward: float | None = None  # the weighted total the learner trains on
    reward_parts: dict[str, float] = dataclasses.field(default_factory=dict)  # each component, unweighted
    env_rewards: dict[str, float] = dataclasses.field(default_factory=dict)  # an environment's parts, summed over turns

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(f"trajectory of prompt {self.prompt_index}: {n} response tokens but {len(self.loss_mask)} "
                             f"loss-mask entries and {len(self.logprobs)} log-probs")
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError(f"trajectory of prompt {self.prompt_index}: loss_mask holds values other than 0 and 1")

    @classmethod
    def sampled(cls, prompt_index: int, group: int, prompt_ids: list[int], response_ids: list[int], logprobs: list[float],
                finish_reason: str, weights_version: int) -> "Trajectory":
        """One engine call's answer: every response token sampled."""
        return cls(prompt_index, group, list(prompt_ids), list(response_ids), [1] * len(response_ids), list(logprobs),
                   finish_reason, weights_version)

    def spans(self) -> list[tuple[int, int]]:
        """[start, end) of each run of sampled tokens in response_ids (one per turn)."""
        out, start = [], None
        for i, m in enumerate(self.loss_mask + [0]):
            if m and start is None:
                start = i
            elif not m and start is not None:
                out.append((start, i))
                start = None
        return out

    @property
    def truncated(self) -> bool:
        return self.finish_reason in UNFINISHED


class Rollouts:
    """One batch of trajectories, whole groups in a row, with the metrics of producing it. Rewards may still be
    being computed (beside the learners' passes): `rewards()` waits for them within a deadline."""

    def __init__(self, samples: list[Trajectory], group_size: int, metrics: dict | None = None,
                 scoring: Future | None = None):
        check_groups([s.group for s in samples], group_size)
        self.samples, self.group_size = samples, group_size
        self.metrics = dict(metrics or {})
        self._scoring = scoring  # resolves to the scoring's own seconds once every sample's reward is set

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [s.prompt_ids for s in self.samples]

    @property
    def response_ids(self) -> list[list[int]]:
        return [s.response_ids for s in self.samples]

    @property
    def scored(self) -> bool:
        return all(s.reward is not None for s in self.samples)

    def wait_scored(self, limit_s: float, what: str) -> float | None:
        """Block until every reward is set; the scoring's own seconds when it ran beside the caller, else None."""
        if self._scoring is None:
            if not self.scored:
                raise RuntimeError(f"{what}: the batch was never scored")
            return None
        seconds = wait_for(self._scoring, what, limit_s, " (the reward functions' deadlines plus timeouts.call_s)")
        self._scoring = None
        return seconds

    def rewards(self) -> torch.Tensor:
        """[N] float32, the weighted totals (the batch must be scored: see wait_scored)."""
        if not self.scored:
            raise RuntimeError("rewards read before the batch was scored")
        return torch.tensor([s.reward for s in self.samples], dtype=torch.float32)

    def reward_parts(self) -> dict[str, torch.Tensor]:
        names = self.samples[0].reward_parts if self.samples else {}
        return {k: torch.tensor([s.reward_parts[k] for s in self.samples], dtype=torch.float32) for k in names}

    def truncated(self) -> torch.Tensor:
        return truncated_flags([s.finish_reason for s in self.samples])

    def batch(self, pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The learners' batch (mask from each sample's loss mask) and the engines' log-probs [N, R]."""
        batch = build_batch(self.prompt_ids, self.response_ids, pad_id, [s.loss_mask for s in self.samples])
        width = max(1, max(len(s.response_ids) for s in self.samples))
        return batch, pad_rows([s.logprobs for s in self.samples], width)

    def groups(self) -> list[list[Trajectory]]:
        n = self.group_size
        return [self.samples[i : i + n] for i in range(0, len(self.samples), n)]


def check_groups(group_ids: list, group_size: int) -> None:
    """Raise unless `group_ids` (each row's group) holds whole groups, each in consecutive rows."""
    if len(group_ids) % group_size:
        raise ValueError(f"{len(group_ids)} rows do not split into groups of {group_size} samples per prompt")
    seen = set()
    for start in range(0, len(group_ids), group_size):
        ids = set(group_ids[start : start + group_size])
        if len(ids) != 1 or ids & seen:
            raise ValueError(f"rows {start}..{start + group_size - 1} mix prompts: the samples of a group must be consecutive rows")
        seen |= ids


def wait_for(fut: Future, what: str, limit_s: float, why: str = ""):
    """fut's result within limit_s, or a WaitTimeout naming what was waited for."""
    try:
        return fut.result(timeout=limit_s)
    except FutureTimeout:
        raise WaitTimeout(f"{what}: not done in {limit_s:g} s{why}") from None


def group_ids(rows: int, n: int, first: int = 0) -> list[int]:
    """The group of each of `rows` requests laid out by groups_of: n in a row share one, numbered from `first`."""
    return [first + r // n for r in range(rows)]


def groups_of(indices, n: int) -> list[int]:
    """Each index n times in a row: the requests for n samples of each prompt, whose answers form its group."""
    return [i for i in indices for _ in range(n)]
