"""PPO math on per-token tensors of shape [batch, response_len] with a 0/1 `mask` marking real response tokens.

Responses are right-padded, so each row's real tokens are a prefix of the row.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Totals(NamedTuple):
    """A whole mini-batch's loss units, over every micro-batch and rank: the tokens a token mean divides by (the
    loss mask's), and the sequences (or pairs) a sequence mean divides by. With totals, a loss on one micro-batch
    is its share of the mini-batch's loss (the shares sum to it), whatever tokens each micro-batch holds."""

    tokens: float
    seqs: float


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_mean(x: torch.Tensor, mask: torch.Tensor, totals: Totals | None = None) -> torch.Tensor:
    """The masked mean over this micro-batch's tokens, or (with `totals`) its share of the mini-batch's."""
    if totals is None:
        return masked_mean(x, mask)
    return (x * mask.to(x.dtype)).sum() / max(totals.tokens, 1.0)


def sequence_mean(x: torch.Tensor, totals: Totals | None = None) -> torch.Tensor:
    """The mean of per-sequence values [B], or (with `totals`) their share of the mini-batch's."""
    return x.mean() if totals is None else x.sum() / max(totals.seqs, 1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise x over the masked entries to mean 0 (optionally kept) and unit variance; padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    # Unbiased variance, as the number of masked entries is small in tiny batches.
    n = mask.sum()
    if n > 1:
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    # Unbiased, always >= 0 estimator of KL(policy || ref) from samples of the policy.
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy."""
    if kind not in KL_ESTIMATORS:
        raise KeyError(f"unknown KL estimator {kind!r}; choose from {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


def shape_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, plus the sequence score on its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    has_tokens = mask.sum(1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. The value after a row's last real token is 0 (the episode ends).

    Returns (advantages, returns), both zero on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Padding positions carry nothing back: the running sum is reset there (values are 0 there too).
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        adv[:, t] = last_gae
    returns = (adv + values) * mask
    return adv, returns



def value_loss_clipped(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    totals: Totals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: 0.5 * max((V - R)^2, (V_clipped - R)^2), token-mean."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * token_mean(torch.maximum(loss_unclipped, loss_clipped), mask, totals)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, {"critic/clipfrac": float(clipfrac)}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
