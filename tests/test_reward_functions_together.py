"""Several reward functions go to the worker processes together: one round trip per chunk of samples for all of
them. Each function's scores, retries and deadlines stay its own: a hung or failing function is named alone."""
import time

import pytest

from rlhf_dist.config import RewardFunction
from rlhf_dist.errors import RewardError
from rlhf_dist.rewards.functions import RuleRewards

CHAR = "rlhf_dist.rewards.rules:char_fraction"
MATH = "rlhf_dist.rewards.math:math_verify_reward"


def test_scores_equal_each_function_alone_in_one_round_trip_per_chunk():
    specs = [RewardFunction(name=MATH, concurrency=2), RewardFunction(name=CHAR, weight=0.5, concurrency=2)]
    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    responses = ["7", " 7 apples", "\\boxed{3}", "", "x", "1e3", "3.0", "aeiou"] * 2
    labels = ["7", "7", "3", "0", "1", "1000", "3", "2"] * 2
    together = RuleRewards(specs, has_labels=True)
    sent = []
    pool = together.pool.get()
    apply_async = pool.apply_async
    pool.apply_async = lambda fn, args: sent.append((fn.__name__, args[0])) or apply_async(fn, args)
    got = together.per_function(prompts, responses, labels)
    alone = [RuleRewards([s], has_labels=True).per_function(prompts, responses, labels) for s in specs]
    assert got == [[a[0], c[0]] for a, c in zip(*alone)]
    assert [row[0] for row in got[:3]] == [1.0, 1.0, 1.0] and got[3][0] == 0.0  # the scores are real ones
    assert sent == [("call_all", [MATH, CHAR])] * 4  # 16 samples on 2 processes: 4 chunks, each scoring both functions
    together.close()


def test_a_hung_function_among_several_is_the_one_named():
    specs = [RewardFunction(name=CHAR, timeout_s=1, concurrency=2),
             RewardFunction(name="tests.helpers:stuck_on_bad", timeout_s=1, concurrency=2)]
    rules = RuleRewards(specs)
    t0 = time.monotonic()
    with pytest.raises(RewardError) as e:
        rules(["p"] * 8, ["ok", "bad"] + ["ok"] * 6)
    assert str(e.value) == ("reward function tests.helpers:stuck_on_bad failed on sample 1 after 1 attempt(s): "
                            "timed out after 1 s (reward.functions timeout_s=1 per call)")
    # the chunks' pass: (1 + 1) s for each of the busiest process's two samples, two chunks each; then the overrun
    # chunk's calls one per chunk, per function
    assert time.monotonic() - t0 < 8 + 2 + 8
    assert rules.per_function(["p"] * 8, ["ok"] * 8) == [[0.5, 1.0]] * 8  # fresh workers after the hung ones ended
    rules.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_a_failing_function_among_several_keeps_its_own_attempts(tmp_path, retries):
    log = tmp_path / "calls.txt"
    specs = [RewardFunction(name=CHAR, concurrency=2),
             RewardFunction(name="tests.helpers:counting_fails_on_bad", kwargs={"log": str(log)}, retries=retries, concurrency=2)]
    rules = RuleRewards(specs)
    with pytest.raises(RewardError) as e:
        rules(["p"] * 4, ["ok", "ok", "bad", "ok"])
    assert str(e.value) == (f"reward function tests.helpers:counting_fails_on_bad failed on sample 2 after "
                            f"{retries + 1} attempt(s): ValueError: bad answer")
    calls = log.read_text().split()
    assert calls.count("bad") == retries + 1  # the first attempt went with the other function's calls
    assert calls.count("ok") == 3  # the samples that succeeded are not called again
    rules.close()
