"""Algorithm math as pure tensor functions: no Ray, no DeepSpeed, no model code."""
from rlhf_dist.algorithms.core import (
    KL_ESTIMATORS,
    compute_gae,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    masked_whiten,
    shape_token_rewards,
    value_loss_clipped,
)

__all__ = [
    "KL_ESTIMATORS",
    "compute_gae",
    "entropy_from_logits",
    "kl_estimate",
    "masked_mean",
    "masked_whiten",
    "shape_token_rewards",
    "value_loss_clipped",
]
