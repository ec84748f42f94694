"""The one scorer: rule functions, a weighted reward model and the overlong penalty, for training (both modes),
evaluation and labelling. Each component is kept unweighted for metrics; the total is the weighted sum."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rlhf_dist.algorithms.advantages import overlong_penalty
from rlhf_dist.rewards.functions import RuleRewards


@dataclasses.dataclass(frozen=True)
class Overlong:
    max_len: int
    buffer: int
    penalty: float


class Scorer:
    def __init__(self, rules: RuleRewards | None, reward_model: Callable[[list[tuple[str, str]]], list[float]] | None = None,
                 model_weight: float = 1.0, overlong: Overlong | None = None, dtype: torch.dtype = torch.float32):
        """`reward_model(pairs of (prompt, response)) -> scores`: the reward-model role, where there is one.
        `dtype`: the learners train on float32 scores; evaluation and labelling keep the values in float64."""
        self.rules = rules if rules else None
        self.reward_model, self.model_weight, self.overlong, self.dtype = reward_model, model_weight, overlong, dtype

    def __call__(self, prompts: list[str], responses: list[str], labels: list | None,
                 lengths: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(totals [N], each component's unweighted values [N])."""
        totals = torch.zeros(len(prompts), dtype=self.dtype)
        parts: dict[str, torch.Tensor] = {}
        if self.rules is not None:
            raw = self.rules.values(prompts, responses, labels)
            weights = [s.weight for s in self.rules.specs]
            totals += torch.tensor([[w * v for w, v in zip(weights, row)] for row in raw], dtype=self.dtype).sum(1)
            for j, name in enumerate(self.rules.names):
                parts[name] = torch.tensor([row[j] for row in raw], dtype=self.dtype)
        if self.reward_model is not None:
            rm = torch.tensor(self.reward_model(list(zip(prompts, responses))), dtype=self.dtype)
            totals += self.model_weight * rm
            parts["reward_model"] = rm
        if self.overlong is not None:
            o = self.overlong
            penalty = overlong_penalty(torch.tensor(lengths), o.max_len, o.buffer, o.penalty).to(self.dtype)
            totals += penalty
            parts["overlong_penalty"] = penalty
        return totals, parts

    def deadline_s(self, n: int) -> float:
        """How long scoring n samples may take before the rule functions' own deadlines end it."""
        return self.rules.deadline_s(n) if self.rules is not None else 0.0
