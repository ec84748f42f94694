"""A reward function that never returns cannot hold the batch past its deadline or keep the process alive;
the batch's wait is one deadline, not per-sample timeouts one after another; non-numbers are errors."""
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from rlhf_dist.config import RewardFunction
from rlhf_dist.errors import RewardError
from rlhf_dist.rewards.functions import RuleRewards


def test_stuck_calls_share_one_batch_deadline():
    rules = RuleRewards([RewardFunction(name="tests.helpers:stuck", timeout_s=1, concurrency=8)])
    rules.pool.get()  # start the workers before timing
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"stuck failed on sample 0 after 1 attempt\(s\): timed out after 1 s \(reward.functions timeout_s=1 per call\) \(8 samples failed\)"):
        rules(["p"] * 8, ["r"] * 8)
    assert time.monotonic() - t0 < 5  # eight stuck calls in parallel: one deadline, not eight
    assert rules.pool._pool is None  # the stuck workers were terminated with their pool


def test_more_calls_than_processes_get_one_timeout_per_wave():
    rules = RuleRewards([RewardFunction(name="tests.helpers:sleepy", timeout_s=3, concurrency=4)])
    assert rules(["p"] * 8, ["r"] * 8) == [1.0] * 8  # 2 s each, two waves of four: within 2 x 3 s
    rules.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_calls_go_in_chunks_and_a_hung_call_is_named_alone(retries):
    """Eight calls on two processes go as four chunks of two. The hung call's chunk overruns; its calls run again
    one per chunk in the same attempt, so its chunk-mate (sample 0) is scored and only the hung sample is named."""
    rules = RuleRewards([RewardFunction(name="tests.helpers:stuck_on_bad", timeout_s=1, concurrency=2, retries=retries)])
    assert rules(["p"] * 8, ["ok"] * 8) == [1.0] * 8
    responses = ["ok", "bad"] + ["ok"] * 6
    t0 = time.monotonic()
    with pytest.raises(RewardError) as e:
        rules(["p"] * 8, responses)
    assert str(e.value) == (f"reward function tests.helpers:stuck_on_bad failed on sample 1 after {retries + 1} attempt(s): "
                            "timed out after 1 s (reward.functions timeout_s=1 per call)")
    # each attempt: 4 s for the chunked pass (two chunks of two per process), 1 s one call per chunk
    assert time.monotonic() - t0 < 5 * (retries + 1) + 8
    assert rules.deadline_s(8) == (retries + 1) * 2 * 1 * (4 + 2)
    rules.close()


@pytest.mark.parametrize("fn,shown", [("returns_bool", "returned bool True, not a number"),
                                      ("returns_string", "returned str '0.5', not a number")])
def test_bool_and_string_rewards_are_errors_not_coerced(fn, shown):
    with pytest.raises(RewardError, match=shown):
        RuleRewards([RewardFunction(name=f"tests.helpers:{fn}")])(["p"], ["r"])


def test_process_exits_after_a_stuck_reward():
    """The old thread pool kept the interpreter alive at exit (its thread never ended)."""
    code = textwrap.dedent("""
        from rlhf_dist.config import RewardFunction
        from rlhf_dist.errors import RewardError
        from rlhf_dist.rewards.functions import RuleRewards
        if __name__ == "__main__":
            try:
                RuleRewards([RewardFunction(name="tests.helpers:stuck", timeout_s=1)])(["p"], ["r"])
            except RewardError as e:
                print("error:", e)
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "timed out after 1 s" in out.stdout
    assert time.monotonic() - t0 < 30


def test_cli_ends_with_one_line_when_a_reward_never_returns(tiny_model, tmp_path):
    """A whole run: the step's scoring hits the deadline, the CLI prints one line, exits 1, and is gone."""
    from tests.conftest import demo_config_dict

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "the {w} cat"}}\n' for w in ["red", "big", "old", "sad"]))
    d = demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))
    d["reward"]["functions"] = [{"name": "tests.helpers:stuck", "timeout_s": 2}]
    d["ppo"].update(advantage_estimator="grpo", rollout_batch_size=4, mini_batch_size=8, micro_batch_size=4)
    d["placement"].update(critic=None, policy={"pool": "main", "num_gpus": 1, "zero_stage": 0},
                          rollout={"pool": "main", "num_engines": 1})
    d["run"].update(steps=1, tensorboard=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rlhf_dist", "train", str(cfg)], capture_output=True, text=True, timeout=540)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rlhf-dist: RewardError: reward function tests.helpers:stuck failed on sample 0"), last
    assert "timed out after 2 s (reward.functions timeout_s=2 per call)" in last, last
    assert "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 500


@pytest.mark.parametrize("response,how", [("bad", "killed by SIGKILL"), ("quit", "exit code 3")])
@pytest.mark.parametrize("together", [False, True])
def test_a_worker_that_exits_is_an_error_at_once_not_a_timeout(response, how, together):
    """multiprocessing's pool replaces a worker that exits but never fails the call it held: the batch used to wait
    out its whole deadline and call it a timeout. Alone or beside another function, the error comes at once and
    names the function whose call ended its process."""
    specs = [RewardFunction(name="tests.helpers:exits_on_bad", concurrency=2)]
    if together:
        specs.insert(0, RewardFunction(name="rlhf_dist.rewards.rules:char_fraction", concurrency=2))
    rules = RuleRewards(specs)
    rules.pool.get()
    t0 = time.monotonic()
    with pytest.raises(RewardError) as e:
        rules(["p"] * 8, ["ok"] * 5 + [response] + ["ok"] * 2)
    assert time.monotonic() - t0 < 15  # the deadline is 60 s a call
    assert str(e.value).startswith("reward function tests.helpers:exits_on_bad failed on sample ")
    assert str(e.value).endswith(f"after 1 attempt(s): a reward worker process exited ({how}) while this call or one beside it ran")
    assert rules.per_function(["p"] * 2, ["ok"] * 2)[0][-1] == 1.0  # fresh workers afterwards
    rules.close()


def test_a_worker_that_exits_before_the_wait_begins_is_still_seen():
    """The race behind a 240 s wait in CI: the worker ended (and the pool joined it and started a replacement)
    before the caller first looked at the pool's workers, so only the replacement was watched. Here the exit is
    long over when the wait begins."""
    import os

    from rlhf_dist.rewards.pool import RewardPool, Watch, WorkerExited, call_all, result

    pool = RewardPool(1, ["tests.helpers:exits_on_bad"])
    procs = pool.get()
    watch = Watch(procs)
    res = procs.apply_async(call_all, (["tests.helpers:exits_on_bad"], [("p", "quit", [{}])], dict(os.environ)))
    t0 = time.monotonic()
    while any(w.exitcode is None for w in watch._seen.values()) or len(procs._pool) < 1:
        assert time.monotonic() - t0 < 30, "the worker never exited"
        time.sleep(0.05)
    time.sleep(0.5)  # the pool's handler joins the exited worker and starts another
    assert all(w.exitcode is None for w in procs._pool)  # only the replacement is in the pool now
    with pytest.raises(WorkerExited, match=r"exit code 3"):
        result(res, time.monotonic() + 60, watch)
    assert time.monotonic() - t0 < 30
    pool.close()
