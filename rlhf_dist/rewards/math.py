"""Verifiable rewards for math answers, through the maintained `math-verify` parser."""
from __future__ import annotations

import functools
import re

from math_verify import parse, verify


def math_verify_reward(prompt: str, response: str, label) -> float:
    """1.0 if the answer math-verify extracts from the response equals the label, else 0.0.

    math-verify's own timeouts (signal.alarm) are turned off: reward calls run under reward.functions timeout_s,
    in worker processes that are ended if a call overruns.
    """
    return _score(response, str(label))


# The score is a function of the two strings alone. A prompt's samples share its label, and a trained policy
# repeats its answers: remembered, they are parsed once per worker process (measured on the GRPO demo: 0.44 ms
# a call, nearly half of it parsing the label).
@functools.lru_cache(maxsize=65536)
def _score(response: str, label: str) -> float:
    answer = parse(response, parsing_timeout=None)
    return 1.0 if answer and verify(_gold(label), answer, timeout_seconds=None) else 0.0


@functools.lru_cache(maxsize=4096)
def _gold(label: str) -> list:
    return parse(label, parsing_timeout=None)  # verify only reads it


def starts_with_number(prompt: str, response: str) -> float:
    """1.0 if the response opens with a number: a format reward that gives a random policy a first signal."""
    return 1.0 if re.match(r"\s*-?\d", response) else 0.0
