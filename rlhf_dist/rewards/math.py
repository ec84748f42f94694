"""Verifiable rewards for math answers, through the maintained `math-verify` parser."""
from __future__ import annotations

import re

from math_verify import parse, verify


def math_verify_reward(prompt: str, response: str, label) -> float:
    """1.0 if the answer math-verify extracts from the response equals the label, else 0.0.

    math-verify's own timeouts (signal.alarm) are turned off: reward calls run under reward.functions timeout_s,
    in worker processes that are ended if a call overruns.
    """
    gold = parse(str(label), parsing_timeout=None)
    answer = parse(response, parsing_timeout=None)
    return 1.0 if answer and verify(gold, answer, timeout_seconds=None) else 0.0


def starts_with_number(prompt: str, response: str) -> float:
    """1.0 if the response opens with a number: a format reward that gives a random policy a first signal."""
    return 1.0 if re.match(r"\s*-?\d", response) else 0.0
