"""The math reward against math-verify itself, run in a separate interpreter where rlhf_dist was never imported
(rlhf_dist.rewards.math makes math-verify remember the sympy numbers it builds: the scores must not change)."""
import json
import random
import subprocess
import sys

from rlhf_dist.rewards.math import math_verify_reward

LABELS = ["7", "1000", "0.5", "50%", "3.5", "-3", "12", "0", "1/2", "x+1"]
FIXED = ["7", " 7", "0007", "1,000", "1 000", "1000.0", "3.50", "3,5", "50%", "50 %", "0.5", ".5", "-3", "- 3",
         "−3", "1e3", "10^3", "2^10", "\\boxed{7}", "The answer is $7$.", "7 apples and 8 pears", "8, no, 7",
         "\\frac{1}{2}", "1/2", "½", "٣", "x+1", "1+x", "\\infty", "nan", "", "   ", "12345678901234567890123",
         "3.14159265358979323846", "0.", "-0", "+7", "7.", "7..", "((7))", "[7]", "{7}", "7\n8", "\\$7", "7$"]


def _cases() -> list[tuple[str, str]]:
    # Plus GRPO-demo-like answers: a number, then random characters, many repeating the same numbers.
    rng = random.Random(0)
    noise = [chr(c) for c in range(32, 127)] + ["é", "\x00", "\\", "$", "{", "}"]
    made = [str(rng.randint(-20, 1200)) * rng.randint(0, 1) + "".join(rng.choices(noise, k=rng.randint(0, 6)))
            for _ in range(400)]
    return [(r, lab) for r in FIXED for lab in LABELS] + [(r, rng.choice(LABELS)) for r in made]


PLAIN = """
import json, sys
from math_verify import parse, verify
out = []
for response, label in json.load(sys.stdin):
    answer = parse(response, parsing_timeout=None)
    out.append(1.0 if answer and verify(parse(label, parsing_timeout=None), answer, timeout_seconds=None) else 0.0)
assert "rlhf_dist" not in sys.modules
print(json.dumps(out))
"""


def test_scores_equal_plain_math_verify():
    cases = _cases()
    plain = subprocess.run([sys.executable, "-c", PLAIN], input=json.dumps(cases), capture_output=True, text=True,
                           check=True, timeout=300)
    expected = json.loads(plain.stdout.strip().splitlines()[-1])
    ours = [math_verify_reward("q", r, lab) for r, lab in cases]
    assert len(ours) == len(expected) == len(cases)
    wrong = [(c, o, e) for c, o, e in zip(cases, ours, expected) if o != e]
    assert not wrong, wrong[:5]
    assert 30 < sum(ours) < len(ours) - 30  # both scores occur: the comparison can tell them apart


def test_math_verify_numbers_are_remembered():
    """If a math-verify release stops building numbers through sympy.Number, this fails rather than the reward
    silently going back to about 0.45 ms a number."""
    from math_verify import parser

    from rlhf_dist.rewards.math import _score

    assert hasattr(parser.Number, "cache_info")
    _score.cache_clear()
    before = parser.Number.cache_info().hits
    for tail in ("ab", "cd", "ef"):  # new responses each time, the same number
        math_verify_reward("q", "41" + tail, "41")
    assert parser.Number.cache_info().hits >= before + 2


def test_verify_runs_once_per_label_and_integer_answer():
    """Responses that extract to the same integers share one verify per label; anything else (a float, an
    expression) is verified on its own. The scores themselves are checked against math-verify above."""
    from rlhf_dist.rewards import math as m

    m._score.cache_clear()
    m._verified.cache_clear()
    assert [math_verify_reward("q", r, "41") for r in ("41ab", "41 cd", "41.")] == [1.0, 1.0, 1.0]
    assert m._verified.cache_info().currsize == 1  # one extraction ([41, "41"]), one label
    assert math_verify_reward("q", "41ab", "42") == 0.0  # a new label: verified again, not taken from "41"
    assert m._verified.cache_info().currsize == 2
    assert math_verify_reward("q", "41.0", "41") == 1.0  # a float: verified on its own, never remembered
    assert math_verify_reward("q", "0", "0") == 1.0 and math_verify_reward("q", "-1", "-1") == 1.0  # sympy's own types
    assert m._verified.cache_info().currsize == 4
