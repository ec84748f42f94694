"""Verifiable rewards for math answers, through the maintained `math-verify` parser."""
from __future__ import annotations

import functools
import re

import sympy
from math_verify import parse, parser, verify

# math-verify turns every number it extracts into `sympy.Number(text)`; given a string, sympy runs its full
# expression parser, which rebuilds its namespace (`from sympy import *`) on every call: about 0.45 ms, most of
# a call's cost (measured on GRPO-demo-like answers: 0.09-0.19 ms a call, 0.02 ms with numbers remembered).
# sympy numbers are immutable values, so each worker process remembers the numbers it has built. Only when
# math-verify still builds them through sympy.Number; tests/test_math_reward.py checks the scores against
# math-verify in a process where this module was never imported.
if parser.Number is sympy.Number:
    parser.Number = functools.lru_cache(maxsize=4096, typed=True)(sympy.Number)


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
    if not answer:
        return 0.0
    key = _plain(answer)
    if key is None:
        return 1.0 if verify(_gold(label), answer, timeout_seconds=None) else 0.0
    return _verified(label, key)


def _plain(answer: list) -> tuple | None:
    """The extraction as a key when it holds only integers and strings (a trained policy's answers are mostly
    these), from which _verified rebuilds it exactly; None for anything else (floats, expressions, sets)."""
    key = []
    for item in answer:
        if isinstance(item, str):
            key.append(item)
        elif isinstance(item, sympy.Integer):  # sympy.Integer(n) gives it back, its 0, 1 and -1 types included
            key.append(int(item))
        else:
            return None
    return tuple(key)


# Many responses extract to the same few numbers ("7", " 7 apples", "7." all give [7, "7"]): verify (sympy's
# comparisons, about half a call's cost) runs once per label and extraction, not once per response.
@functools.lru_cache(maxsize=65536)
def _verified(label: str, key: tuple) -> float:
    answer = [item if isinstance(item, str) else sympy.Integer(item) for item in key]
    return 1.0 if verify(_gold(label), answer, timeout_seconds=None) else 0.0


@functools.lru_cache(maxsize=4096)
def _gold(label: str) -> list:
    return parse(label, parsing_timeout=None)  # verify only reads it


def starts_with_number(prompt: str, response: str) -> float:
    """1.0 if the response opens with a number: a format reward that gives a random policy a first signal."""
    return 1.0 if re.match(r"\s*-?\d", response) else 0.0
