"""The losses handed to learner workers. A worker calls `loss(outputs, batch)` on a micro-batch and knows
nothing else of the algorithm: `outputs` is what its model produced, `batch` the per-token tensors the
controller computed (advantages, returns, old and reference log-probs, masks).

With token-budget micro-batches the worker passes `totals` (rlhf_dist.algorithms.core.Totals: the mini-batch's
loss tokens and sequences over every rank), and each loss returns its micro-batch's share of the mini-batch's
loss, so micro-batches holding different numbers of tokens give the gradient of the whole; the metrics stay
the micro-batch's own. `loss_tokens(batch)` is what each row adds to `totals.tokens`."""
from __future__ import annotations

import dataclasses

import torch

from rlhf_dist.algorithms.core import Totals, kl_estimate, masked_mean, token_mean, value_loss_clipped
from rlhf_dist.algorithms.policy_losses import POLICY_LOSSES, aggregate
from rlhf_dist.algorithms.preference import bradley_terry_loss, dpo_loss, sft_loss

# Largest |engine - learner| log-prob of a sampled token: reduced by max over micro-batches and ranks.
LOGPROB_PROBE = "rollout/engine_learner_logprob_diff_max"


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    name: str = "ppo"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    dual_clip_c: float = 3.0
    aggregation: str = "token_mean"
    norm_constant: float | None = None  # seq_mean_token_sum_norm only
    entropy_coef: float = 0.0
    kl_loss_coef: float = 0.0
    kl_loss_estimator: str = "k3"
    needs_entropy: bool = True
    # True: a single on-policy update, where the old log-probs are this forward's own, detached (ratio 1, the same
    # gradient as recomputed ones); the batch then carries no `old_logprobs`.
    old_from_forward: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.kl_loss_coef > 0

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B]: the tokens each row puts in the loss (an off-policy weight of 0 takes a token out)."""
        mask = batch["mask"]
        return (mask * (batch["is_weights"] > 0) if "is_weights" in batch else mask).sum(-1)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], totals: Totals | None = None):
        mask, logp = batch["mask"], outputs["logprobs"]
        old = logp.detach() if self.old_from_forward else batch["old_logprobs"]
        per_token, metrics = POLICY_LOSSES[self.name](
            logp, old, batch["advantages"], mask,
            clip_eps_low=self.clip_eps, clip_eps_high=self.clip_eps_high, dual_clip_c=self.dual_clip_c,
        )
        if self.kl_loss_coef:
            kl = kl_estimate(logp, batch["ref_logprobs"], self.kl_loss_estimator)
            per_token = per_token + self.kl_loss_coef * kl
            metrics["policy/kl_loss"] = float(masked_mean(kl.detach(), mask))
        if "is_weights" in batch:
            # Off-policy correction (rlhf_dist.algorithms.correction): weight 0 takes a token out of the loss.
            per_token, mask = per_token * batch["is_weights"], mask * (batch["is_weights"] > 0)
        loss = aggregate(per_token, mask, self.aggregation, self.norm_constant, totals)
        entropy = masked_mean(outputs["entropy"], mask)
        if self.entropy_coef:
            loss = loss - self.entropy_coef * token_mean(outputs["entropy"], mask, totals)
        shown = loss
        if totals is not None:  # the metric is this micro-batch's own loss, as without totals
            with torch.no_grad():
                shown = aggregate(per_token, mask, self.aggregation, self.norm_constant) - self.entropy_coef * entropy
        metrics.update({"policy/loss": float(shown.detach()), "policy/entropy": float(entropy.detach())})
        if "engine_logprobs" in batch:
            # No pre-update pass compared the engines' log-probs with the learner's: this first forward does.
            diff = (logp.detach().float() - batch["engine_logprobs"]).abs() * mask
            metrics[LOGPROB_PROBE] = float(diff.max()) if diff.numel() else 0.0
        return loss, metrics


@dataclasses.dataclass(frozen=True)
class ClippedValueLoss:
    clip_eps: float
    needs_entropy: bool = False

    def loss_tokens(self, batch):
        return batch["mask"].sum(-1)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], totals: Totals | None = None):
        args = (outputs["values"], batch["old_values"], batch["returns"], batch["mask"], self.clip_eps)
        loss, metrics = value_loss_clipped(*args, totals)
        shown = loss if totals is None else value_loss_clipped(*args)[0]
        metrics["critic/loss"] = float(shown.detach())
        return loss, metrics


# --- supervised and preference stages ---


@dataclasses.dataclass(frozen=True)
class SFTLoss:
    """Outputs: `logprobs` [B, R] of the response tokens; prompt tokens carry no loss (they are not in R)."""

    needs_entropy: bool = False

    def loss_tokens(self, batch):
        return batch["mask"].sum(-1)

    def __call__(self, outputs, batch, totals: Totals | None = None):
        loss = sft_loss(outputs["logprobs"], batch["mask"], totals)
        shown = loss if totals is None else sft_loss(outputs["logprobs"], batch["mask"])
        return loss, {"sft/loss": float(shown.detach()), "sft/tokens": float(batch["mask"].sum())}


@dataclasses.dataclass(frozen=True)
class PairwiseRewardLoss:
    """Outputs: `scores` [B, 2] (chosen, rejected); the batch may hold a per-pair `margin`."""

    needs_entropy: bool = False

    def loss_tokens(self, batch):  # a pair is one unit of the mean
        return torch.ones(batch["input_ids"].shape[0])

    def __call__(self, outputs, batch, totals: Totals | None = None):
        scores = outputs["scores"]
        args = (scores[:, 0], scores[:, 1], batch.get("margin", 0.0))
        loss, metrics = bradley_terry_loss(*args, totals=totals)
        shown = loss if totals is None else bradley_terry_loss(*args)[0]
        metrics.update(
            {"rm/loss": float(shown.detach()), "rm/chosen_mean": float(scores[:, 0].mean()),
             "rm/rejected_mean": float(scores[:, 1].mean())}
        )
        return loss, metrics


@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """Outputs: `logps` [B, 2] sequence log-probs (chosen, rejected); the batch holds the reference's `ref_logps`."""

    beta: float
    kind: str = "sigmoid"
    needs_entropy: bool = False

    def loss_tokens(self, batch):  # a pair is one unit of the mean
        return torch.ones(batch["input_ids"].shape[0])

    def __call__(self, outputs, batch, totals: Totals | None = None):
        logps, ref = outputs["logps"], batch["ref_logps"]
        args = (logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], self.beta, self.kind)
        loss, metrics = dpo_loss(*args, totals=totals)
        metrics["dpo/loss"] = float((loss if totals is None else dpo_loss(*args)[0]).detach())
        return loss, metrics
