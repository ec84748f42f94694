"""Critic-free RL end to end on CPU (real Ray, DeepSpeed, vLLM): GRPO with DAPO extras, no critic actors."""
from pathlib import Path

import pytest

from rlhf_dist.config import derive, load_config
from rlhf_dist.metrics import read_metrics
from rlhf_dist.trainers.rl_roles import role_slots

from tests.conftest import demo_config_dict

ARITH = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "arith_prompts.jsonl")


def grpo_config(model_dir: str, out: str):
    d = demo_config_dict(model_dir, ARITH, out)
    d["data"].update({"label_key": "answer", "max_prompt_tokens": 16})
    d["rollout"].update({"max_new_tokens": 4, "n_samples_per_prompt": 4})
    d["reward"] = {
        "functions": [
            {"name": "rlhf_dist.rewards.math:math_verify_reward"},
            {"name": "rlhf_dist.rewards.math:starts_with_number", "weight": 0.1},
        ]
    }
    d["ppo"].update({
        "advantage_estimator": "grpo", "policy_loss": "clip_higher", "clip_eps_high": 0.28,
        "loss_aggregation": "seq_mean_token_mean", "kl_loss_coef": 0.01,
        "dynamic_sampling": True, "max_sampling_rounds": 2, "overlong_buffer": 2,
        "rollout_batch_size": 4, "mini_batch_size": 16, "micro_batch_size": 8,
    })
    d["placement"].pop("critic")
    d["placement"]["policy"]["zero_stage"] = 1
    d["placement"]["reference"] = {"pool": "main", "num_gpus": 2, "zero_stage": 3}  # sharded over 2 ranks
    d["placement"]["rollout"]["num_engines"] = 1
    return load_config(None, base=d)


def test_critic_free_estimators_place_no_critic(tmp_path):
    cfg = grpo_config(str(tmp_path / "m"), str(tmp_path / "run"))
    assert "critic" not in role_slots(cfg, derive(cfg))
    assert derive(cfg).critic_ranks == 0


@pytest.mark.slow
def test_grpo_run_with_dapo_extras(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.ppo import train

    cfg = grpo_config(tiny_model, str(tmp_path / "run"))
    rows = read_metrics(train(cfg))
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert not any(k.startswith("critic/") for k in row) and "values/mean" not in row
        assert 0.0 <= row["reward/math_verify_reward"] <= 1.0
        assert 1 <= row["dynamic_sampling/rounds"] <= 2
        assert "timing/score_beside" not in row  # dynamic sampling needs the scores before the passes
        assert row["sync/verified"] is True
        assert row["rollout/engine_learner_logprob_diff_max"] < 1e-4
        assert "policy/kl_loss" in row and "policy/clipfrac" in row
    # Step 1: the policy (ZeRO-1) and the ZeRO-3 reference hold the same weights, so their log-probs agree.
    assert abs(rows[0]["kl/mean"]) < 1e-5


def test_remembered_math_scores_equal_math_verify_own():
    """math_verify_reward remembers its scores (a function of response and label alone); every call, first or
    repeated, in any order, gives what math-verify itself gives, int labels included."""
    from math_verify import parse, verify

    from rlhf_dist.rewards.math import _score, math_verify_reward

    cases = [("7", "7"), ("7", "8"), (" 12", "12"), ("3+4", "7"), ("abc", "1"), ("\\frac{1}{2}", "0.5"), ("x", "x"),
             ("7", 7), ("8", "7"), ("", "0"), ("0", 0), ("-3", "-3")]
    _score.cache_clear()
    for _ in range(2):
        for response, label in cases + cases[::-1]:
            answer = parse(response, parsing_timeout=None)
            own = 1.0 if answer and verify(parse(str(label), parsing_timeout=None), answer, timeout_seconds=None) else 0.0
            assert math_verify_reward("q", response, label) == own, (response, label)
    assert _score.cache_info().hits > 0 and sum(math_verify_reward("q", r, lab) for r, lab in cases) == 7.0
