"""The losses handed to learner workers. A worker calls `loss(outputs, batch)` on a micro-batch and knows
nothing else of the algorithm: `outputs` is what its model produced, `batch` the per-token tensors the
controller computed (advantages, returns, old log-probs, masks)."""
from __future__ import annotations

import dataclasses

import torch

from rlhf_dist.algorithms.core import masked_mean, policy_loss_ppo, value_loss_clipped


@dataclasses.dataclass(frozen=True)
class PPOPolicyLoss:
    clip_eps: float
    entropy_coef: float = 0.0
    needs_entropy: bool = True

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        mask = batch["mask"]
        loss, metrics = policy_loss_ppo(outputs["logprobs"], batch["old_logprobs"], batch["advantages"], mask, self.clip_eps)
        entropy = masked_mean(outputs["entropy"], mask)
        if self.entropy_coef:
            loss = loss - self.entropy_coef * entropy
        metrics.update({"policy/loss": float(loss.detach()), "policy/entropy": float(entropy.detach())})
        return loss, metrics


@dataclasses.dataclass(frozen=True)
class ClippedValueLoss:
    clip_eps: float
    needs_entropy: bool = False

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        loss, metrics = value_loss_clipped(outputs["values"], batch["old_values"], batch["returns"], batch["mask"], self.clip_eps)
        metrics["critic/loss"] = float(loss.detach())
        return loss, metrics
