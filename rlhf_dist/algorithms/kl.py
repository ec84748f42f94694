"""KL controllers: the coefficient of the per-token KL penalty, fixed or adapted toward a target KL."""
from __future__ import annotations


class AdaptiveKLController:
    """Adjusts the KL coefficient toward a target KL (Ziegler et al. 2019): proportional, clipped at +-20%."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_samples / self.horizon
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
