"""Every algorithm name the config accepts, read from the registries that implement them: adding an entry to a
registry is all it takes for the config to accept the name (and nothing else can be named)."""
from __future__ import annotations

from typing import Literal

from rlhf_dist.algorithms.advantages import ADVANTAGE_ESTIMATORS
from rlhf_dist.algorithms.core import KL_ESTIMATORS
from rlhf_dist.algorithms.correction import CORRECTIONS
from rlhf_dist.algorithms.policy_losses import AGGREGATIONS, POLICY_LOSSES

__all__ = ["ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "CORRECTIONS", "KL_ESTIMATORS", "POLICY_LOSSES", "names"]


def names(registry) -> type:
    """A Literal of the registry's names, for a pydantic field (errors list the allowed values)."""
    return Literal[tuple(registry)]  # type: ignore[valid-type]
