"""Rule-based reward functions: fn(prompt: str, response: str, **kwargs) -> float."""
from __future__ import annotations


def char_fraction(prompt: str, response: str, chars: str = "aeiou") -> float:
    """Fraction of the response's non-space characters that are in `chars` (0 for an empty response).

    Learnable by a tiny random policy (it can shift probability towards tokens rich in those characters),
    which makes it the CPU demo's reward.
    """
    text = [c for c in response if not c.isspace()]
    if not text:
        return 0.0
    return sum(c in chars for c in text) / len(text)


def length_penalty(prompt: str, response: str, target: int = 40) -> float:
    """-|len(response) - target| / target: prefers responses of about `target` characters."""
    return -abs(len(response) - target) / target
