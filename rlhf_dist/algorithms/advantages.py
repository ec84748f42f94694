"""Advantage estimators behind one registry. Each takes the same inputs and returns (advantages, returns),
both [B, T] and zero on padding. Rows of one prompt are consecutive: groups are rows [g*G, (g+1)*G)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rlhf_dist.algorithms.core import compute_gae, masked_whiten, shape_token_rewards


@dataclasses.dataclass
class AdvantageInputs:
    scores: torch.Tensor  # [B] sequence-level reward
    mask: torch.Tensor  # [B, T] 1 on real response tokens
    kl: torch.Tensor  # [B, T] per-token KL estimate (0 where no KL is put in the reward)
    kl_coef: float  # weight of `kl` as a per-token reward penalty
    group_size: int  # samples per prompt
    values: torch.Tensor | None = None  # [B, T] critic values (gae only)


@dataclasses.dataclass(frozen=True)
class Estimator:
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    needs_critic: bool
    needs_groups: bool
    doc: str
    uses_kl_reward: bool = True  # False: advantages come from sequence scores alone (a KL reward is ignored)


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} rows does not split into groups of {group_size}")
    return x.view(-1, group_size)


def _broadcast(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_seq.to(mask.dtype)[:, None] * mask


def gae(inp: AdvantageInputs, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation on KL-shaped token rewards; advantages whitened over the batch unless
    `whiten` is off (returns, the critic's targets, never are)."""
    rewards = shape_token_rewards(inp.scores, inp.kl, inp.mask, inp.kl_coef)
    advantages, returns = compute_gae(rewards, inp.values, inp.mask, gamma, lam)
    return (masked_whiten(advantages, inp.mask) if whiten else advantages), returns


def grpo(inp: AdvantageInputs, eps: float = 1e-6, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """(score - group mean) / (group std + eps), the same for every token of a response."""
    g = _groups(inp.scores.double(), inp.group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    adv = _broadcast(adv.reshape(-1), inp.mask)
    return adv, adv


def dr_grpo(inp: AdvantageInputs, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """score - group mean: no std division (Dr. GRPO); pair with `seq_mean_token_sum_norm` aggregation."""
    g = _groups(inp.scores.double(), inp.group_size)
    adv = _broadcast((g - g.mean(1, keepdim=True)).reshape(-1), inp.mask)
    return adv, adv


def rloo(inp: AdvantageInputs, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """score - mean of the other samples of the same prompt (leave-one-out baseline)."""
    g = _groups(inp.scores.double(), inp.group_size)
    G = inp.group_size
    baseline = (g.sum(1, keepdim=True) - g) / (G - 1)
    adv = _broadcast((g - baseline).reshape(-1), inp.mask)
    return adv, adv


def _discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def reinforce_pp(inp: AdvantageInputs, gamma: float = 1.0, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: KL-shaped token rewards, discounted return-to-go, whitened over the whole batch."""
    rewards = shape_token_rewards(inp.scores.double(), inp.kl.double(), inp.mask.double(), inp.kl_coef)
    returns = _discounted_returns(rewards, inp.mask.double(), gamma)
    return masked_whiten(returns, inp.mask.double()), returns


def reinforce_pp_baseline(inp: AdvantageInputs, gamma: float = 1.0, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with the group-mean score subtracted first (a per-prompt baseline), then global whitening."""
    g = _groups(inp.scores.double(), inp.group_size)
    centred = dataclasses.replace(inp, scores=(g - g.mean(1, keepdim=True)).reshape(-1))
    return reinforce_pp(centred, gamma=gamma)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(gae, needs_critic=True, needs_groups=False, doc="PPO with a critic; reward-model RLHF"),
    "grpo": Estimator(grpo, needs_critic=False, needs_groups=True, doc="group-normalised scores; verifiable rewards", uses_kl_reward=False),
    "dr_grpo": Estimator(dr_grpo, needs_critic=False, needs_groups=True, doc="GRPO without std or length bias", uses_kl_reward=False),
    "rloo": Estimator(rloo, needs_critic=False, needs_groups=True, doc="leave-one-out baseline; unbiased, low variance", uses_kl_reward=False),
    "reinforce_pp": Estimator(reinforce_pp, needs_critic=False, needs_groups=False, doc="global whitening, 1 sample/prompt ok"),
    "reinforce_pp_baseline": Estimator(
        reinforce_pp_baseline, needs_critic=False, needs_groups=True, doc="REINFORCE++ with a per-prompt baseline"
    ),
}


def estimate_advantages(name: str, inp: AdvantageInputs, **params) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; choose from {sorted(ADVANTAGE_ESTIMATORS)}")
    est = ADVANTAGE_ESTIMATORS[name]
    if est.needs_critic and inp.values is None:
        raise ValueError(f"advantage estimator {name!r} needs critic values")
    if est.needs_groups and inp.group_size < 2:
        raise ValueError(f"advantage estimator {name!r} needs rollout.n_samples_per_prompt >= 2")
    adv, ret = est.fn(inp, **params)
    # Group statistics are taken in float64; results come back in the mask's dtype.
    return adv.to(inp.mask.dtype), ret.to(inp.mask.dtype)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong penalty: 0 up to max_len - buffer, then falling linearly to -penalty at max_len."""
    start = max_len - buffer
    over = (lengths.double() - start).clamp(min=0)
    return -(over / buffer).clamp(max=1.0) * penalty


def informative_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """[num_groups] bool: True where the samples of a prompt do not all score the same (DAPO dynamic sampling)."""
    g = _groups(scores, group_size)
    return (g.max(1).values - g.min(1).values) > 0
