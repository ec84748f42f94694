"""Off-policy correction: the engine (behaviour policy) sampled the tokens, the learner trains on them.

The two differ by staleness (asynchronous mode: the engine's weights are up to k versions old) and by numerics
(different kernels and dtypes). Each correction turns the per-token ratio r = pi_learner / pi_engine into loss
weights [B, R]: a weight multiplies the token's policy loss, a weight of 0 also takes the token out of the
aggregation's denominator (it is masked). All are pure tensor functions chosen by name in CORRECTIONS.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlhf_dist.algorithms.core import masked_mean

# Tokens whose ratio leaves this band count as "mismatched" in the metrics, whatever the correction.
MISMATCH_BAND = (0.9, 1.1)


def _frac(hit: torch.Tensor, mask: torch.Tensor) -> float:
    return float(masked_mean(hit.float(), mask))


def no_correction(learner_lp, engine_lp, mask, cap, band):
    """On-policy: every token weighs 1."""
    return torch.ones_like(learner_lp), {}


def token_tis(learner_lp, engine_lp, mask, cap, band):
    """Truncated importance sampling per token: w = min(r, cap)."""
    ratio = torch.exp(learner_lp - engine_lp)
    return ratio.clamp(max=cap), {"correction/clipped_frac": _frac(ratio > cap, mask)}


def token_mask(learner_lp, engine_lp, mask, cap, band):
    """Tokens whose ratio leaves [band low, band high] are masked (w = 0); the others weigh 1."""
    ratio = torch.exp(learner_lp - engine_lp)
    keep = (ratio >= band[0]) & (ratio <= band[1])
    return keep.to(learner_lp.dtype), {"correction/masked_frac": _frac(~keep, mask)}


def _sequence_ratio(learner_lp, engine_lp, mask) -> torch.Tensor:
    """Geometric mean of the token ratios over each sequence's real tokens, as [B, 1]."""
    return torch.exp(masked_mean(learner_lp - engine_lp, mask, dim=1)).unsqueeze(1)


def seq_tis(learner_lp, engine_lp, mask, cap, band):
    """Truncated IS with one ratio per sequence (the geometric mean): w = min(r_seq, cap) on all its tokens."""
    ratio = _sequence_ratio(learner_lp, engine_lp, mask)
    w = ratio.clamp(max=cap).expand_as(learner_lp)
    return w, {"correction/clipped_seq_frac": float((ratio > cap).float().mean())}


def seq_mask(learner_lp, engine_lp, mask, cap, band):
    """Sequences whose geometric-mean ratio leaves the band are masked whole."""
    ratio = _sequence_ratio(learner_lp, engine_lp, mask)
    keep = (ratio >= band[0]) & (ratio <= band[1])
    return keep.to(learner_lp.dtype).expand_as(learner_lp), {"correction/masked_seq_frac": float((~keep).float().mean())}


CORRECTIONS: dict[str, Callable] = {
    "none": no_correction,
    "token_tis": token_tis,
    "token_mask": token_mask,
    "seq_tis": seq_tis,
    "seq_mask": seq_mask,
}


def correction_weights(name: str, learner_lp, engine_lp, mask, cap: float, band: tuple[float, float]):
    """Loss weights [B, R] (0 on padding) and what the correction clipped or masked."""
    with torch.no_grad():
        w, metrics = CORRECTIONS[name](learner_lp, engine_lp, mask, cap, band)
        return w * mask, metrics


def mismatch_metrics(learner_lp, engine_lp, mask) -> dict:
    """How far the engine's distribution is from the learner's on the sampled tokens: KL(engine || learner)
    by the k3 estimator (non-negative, low variance) and the fraction of tokens with ratio outside MISMATCH_BAND."""
    with torch.no_grad():
        log_ratio = learner_lp - engine_lp
        ratio = torch.exp(log_ratio)
        lo, hi = MISMATCH_BAND
        return {
            "mismatch/kl": float(masked_mean(ratio - 1 - log_ratio, mask)),
            "mismatch/ratio_outside_band_frac": _frac((ratio < lo) | (ratio > hi), mask),
        }


def off_policy_terms(name: str, learner_lp, engine_lp, mask, cap: float, band: tuple[float, float]):
    """What one step needs: the loss weights (None for "none", so the on-policy loss is untouched) and the
    mismatch and correction metrics."""
    metrics = mismatch_metrics(learner_lp, engine_lp, mask)
    if name == "none":
        return None, metrics
    weights, clipped = correction_weights(name, learner_lp, engine_lp, mask, cap, band)
    return weights, {**metrics, **clipped}
