"""KL controllers: the coefficient of the per-token KL penalty, fixed or adapted toward a target KL."""
from __future__ import annotations

import math


class AdaptiveKLController:
    """Adjusts the KL coefficient toward a target KL (Ziegler et al. 2019): proportional, clipped at +-20%.

    The step's weight n_samples / horizon is capped at 1: above it, one step would move the coefficient by more
    than the clipped error, and past 5 (a horizon near the samples per step) the factor 1 + error * weight
    turned negative, making the KL penalty a bonus. Capped, each update multiplies by a factor in [0.8, 1.2],
    so the coefficient stays positive (or zero) whatever the settings. A KL that is not a finite number (a
    broken step) leaves the coefficient as it is."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        if not math.isfinite(current_kl):
            return self.value
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * min(1.0, n_samples / self.horizon)
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class FixedKLController:
    def __init__(self, init_coef: float):
        self.value = init_coef

    def update(self, current_kl: float, n_samples: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def kl_controller(coef: float, target: float | None, horizon: int):
    """Adaptive toward `target` when one is given, otherwise fixed at `coef`."""
    return AdaptiveKLController(coef, target, horizon) if target else FixedKLController(coef)
