"""Losses for the supervised and preference stages, as pure tensor functions.

Sequence log-probabilities are sums of per-token log-probs over the response tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_dist.algorithms.core import Totals, sequence_mean, token_mean


def sequence_logprob(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] token log-probs -> [B] sums over the masked (response) tokens."""
    return (logp * mask.to(logp.dtype)).sum(-1)


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, totals: Totals | None = None) -> torch.Tensor:
    """Negative log-likelihood of the response tokens, averaged over tokens (prompt tokens are masked out)."""
    return -token_mean(logp, mask, totals)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                       totals: Totals | None = None):
    """Reward-model loss: -log sigmoid(r_chosen - r_rejected - margin), mean over pairs; and pairwise accuracy."""
    diff = chosen - rejected - margin
    loss = sequence_mean(-F.logsigmoid(diff), totals)
    with torch.no_grad():
        accuracy = (chosen > rejected).float().mean()
        gap = (chosen - rejected).mean()
    return loss, {"rm/accuracy": float(accuracy), "rm/margin": float(gap)}


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
    totals: Totals | None = None,
):
    """DPO on sequence log-probs. h = (pi_c - pi_r) - (ref_c - ref_r);
    sigmoid: -log sigmoid(beta * h); ipo: (h - 1/(2 beta))^2. Implicit rewards are beta * (pi - ref)."""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise KeyError(f"unknown DPO loss {kind!r}; choose 'sigmoid' or 'ipo'")
    with torch.no_grad():
        r_c = beta * (policy_chosen - ref_chosen)
        r_r = beta * (policy_rejected - ref_rejected)
        metrics = {
            "dpo/rewards_chosen": float(r_c.mean()),
            "dpo/rewards_rejected": float(r_r.mean()),
            "dpo/margin": float((r_c - r_r).mean()),
            "dpo/accuracy": float((r_c > r_r).float().mean()),
        }
    return sequence_mean(losses, totals), metrics
