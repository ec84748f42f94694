"""Policy losses and loss aggregation behind registries. All take [B, T] tensors and a 0/1 mask.

Each loss returns the per-token loss (before aggregation) and metrics; `aggregate` turns it into a scalar.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlhf_dist.algorithms.core import Totals, masked_mean, sequence_mean, token_mean


def _clip_metrics(ratio: torch.Tensor, clipped_mask: torch.Tensor, mask: torch.Tensor, log_ratio: torch.Tensor) -> dict:
    with torch.no_grad():
        return {
            "policy/clipfrac": float(masked_mean(clipped_mask.float(), mask)),
            "policy/approx_kl": float(masked_mean(0.5 * log_ratio**2, mask)),
            "policy/ratio_mean": float(masked_mean(ratio, mask)),
        }


def ppo_clip(logp, old_logp, advantages, mask, clip_eps_low=0.2, clip_eps_high=None, **_):
    """Clipped surrogate; clip_eps_high > clip_eps_low gives DAPO's asymmetric 'clip-higher'."""
    high = clip_eps_low if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps_low, 1 + high)
    loss = torch.maximum(unclipped, clipped)
    return loss, _clip_metrics(ratio, clipped > unclipped, mask, log_ratio)


def dual_clip(logp, old_logp, advantages, mask, clip_eps_low=0.2, clip_eps_high=None, dual_clip_c=3.0, **_):
    """PPO clip plus a bound of -c * A on negative-advantage tokens, so a huge ratio cannot blow the loss up."""
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_eps_low, clip_eps_high)
    bound = -advantages * dual_clip_c
    hit = (advantages < 0) & (loss > bound)
    metrics["policy/dual_clipfrac"] = float(masked_mean(hit.float(), mask))
    return torch.where(hit, bound, loss), metrics


def gspo(logp, old_logp, advantages, mask, clip_eps_low=3e-4, clip_eps_high=4e-4, **_):
    """GSPO: one importance ratio per sequence, exp(mean over tokens of log-ratio), clipped at sequence level.

    The per-token form s_i * exp(logp - sg(logp)) has the sequence ratio's value and spreads its gradient
    evenly over the sequence's tokens.
    """
    lengths = mask.sum(1).clamp(min=1)
    seq_log_ratio = ((logp - old_logp) * mask).sum(1) / lengths
    token_log_ratio = seq_log_ratio.detach()[:, None] + logp - logp.detach()
    ratio = torch.exp(token_log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    return loss, _clip_metrics(ratio, clipped > unclipped, mask, logp - old_logp)


POLICY_LOSSES: dict[str, Callable] = {"ppo": ppo_clip, "dual_clip": dual_clip, "clip_higher": ppo_clip, "gspo": gspo}


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_constant: float | None = None,
              totals: Totals | None = None) -> torch.Tensor:
    """token_mean: mean over all tokens; seq_mean_token_mean: mean per sequence, then over sequences;
    seq_mean_token_sum_norm: sum per sequence / a constant (Dr. GRPO; the constant is usually max length).
    With `totals` (token-budget micro-batches): this micro-batch's share of the mini-batch's aggregate."""
    mask = mask.to(loss.dtype)
    if mode == "token_mean":
        return token_mean(loss, mask, totals)
    if mode == "seq_mean_token_mean":
        return sequence_mean(masked_mean(loss, mask, dim=1), totals)
    if mode == "seq_mean_token_sum_norm":
        if not norm_constant:
            raise ValueError("seq_mean_token_sum_norm needs a norm_constant (e.g. rollout.max_new_tokens)")
        return sequence_mean((loss * mask).sum(1) / norm_constant, totals)
    raise KeyError(f"unknown loss aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
