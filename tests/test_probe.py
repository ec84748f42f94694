"""The weight probe's set and comparison (pure), and its limit: derived from the dtype, on in every shipped RL
config. The probe on real engines: tests/test_sync_faults.py (a corrupted engine weight stops an asynchronous
run at the next sync) and every integration run (each verified sync is probed)."""
import math
from pathlib import Path

import pytest
import yaml

from rlhf_dist.config import load_config
from rlhf_dist.config.derive import DEFAULT_LOGPROB_LIMITS, logprob_diff_limit
from rlhf_dist.sync.probe import probe_set, worst_difference

from tests.conftest import demo_config_dict

ROOT = Path(__file__).resolve().parents[1]


def test_probe_set_is_prompts_with_fixed_responses():
    ids = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13]]
    p = probe_set(ids, 4, prompt_tokens=3, response_tokens=2)
    # prompt i's head, then the tail of prompt i+1 (no beginning-of-sequence token inside a response)
    assert p.seqs == ((1, 5, 6, 8, 9), (1, 8, 9, 12, 13), (1, 10, 11, 6, 7))
    assert p.starts == (3, 3, 3) and p.tokens == 6
    assert probe_set(ids, 4, 3, 2) == p  # the same prompts give the same set (a resumed run's too)
    assert probe_set(ids, 1, 3, 2).seqs == ((1, 5, 6, 8, 9),)
    assert probe_set(ids, 0) is None and probe_set([], 4) is None


def test_worst_difference_names_the_sequence_and_token():
    learner = [[-1.0, -2.0], [-0.5, -3.0]]
    assert worst_difference([[-1.0, -2.0], [-0.5, -3.0]], learner) == (0.0, 0, 0)
    d, seq, tok = worst_difference([[-1.0, -2.1], [-0.5, -5.0]], learner)
    assert (seq, tok) == (1, 1) and d == pytest.approx(2.0)
    assert worst_difference([[-1.0, float("nan")], [-0.5, -3.0]], learner)[0] == math.inf  # NaN is never within a limit
    assert worst_difference([[-1.0], [-0.5, -3.0]], learner)[:2] == (math.inf, 0)  # a missing token too


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_limit_follows_the_dtype_unless_set(dtype, tmp_path):
    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["model"]["dtype"] = dtype
    assert logprob_diff_limit(load_config(None, base=d)) == DEFAULT_LOGPROB_LIMITS[dtype]
    assert logprob_diff_limit(load_config(None, ["sync.max_logprob_diff=0.02"], base=d)) == 0.02
    assert logprob_diff_limit(load_config(None, ["sync.max_logprob_diff=null"], base=d)) is None


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) + ["pipeline_cpu/ppo.yaml"])
def test_probe_is_on_in_every_shipped_rl_config(path):
    data = yaml.safe_load((ROOT / "configs" / path).read_text())
    sync = data.get("sync") or {}
    assert sync.get("max_logprob_diff", "auto") is not None and sync.get("probe_prompts", 4) > 0, path
    assert sync.get("verify_every", 1) > 0, path  # the probe follows verified syncs
