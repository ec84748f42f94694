"""The lean step end to end (real Ray, DeepSpeed, vLLM): no KL term, one on-policy update, so no reference
actor and no pre-update pass; the engine/learner probe is still measured and logged."""
from pathlib import Path

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

ARITH = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "arith_prompts.jsonl")


def lean_config(model_dir: str, out: str, old_logprobs: str):
    d = demo_config_dict(model_dir, ARITH, out)
    d["data"].update({"label_key": "answer", "max_prompt_tokens": 16})
    d["rollout"].update({"max_new_tokens": 4, "n_samples_per_prompt": 4})
    d["reward"] = {"functions": [{"name": "rlhf_dist.rewards.math:math_verify_reward"}]}
    d["ppo"].pop("log_kl")
    d["ppo"].update({"advantage_estimator": "grpo", "rollout_batch_size": 4, "mini_batch_size": 16,
                     "micro_batch_size": 8, "old_logprobs": old_logprobs})
    d["cluster"] = {"phase_threads": True}  # the engine and the lone update take every core in turn
    d["placement"].pop("critic")
    d["placement"]["policy"]["zero_stage"] = 1
    d["placement"]["rollout"]["num_engines"] = 1
    return load_config(None, base=d)


@pytest.mark.slow
@pytest.mark.parametrize("old_logprobs", ["learner", "engine"])
def test_lean_step_runs_no_reference_and_no_policy_pass(ray_session, tiny_model, tmp_path, old_logprobs):
    from rlhf_dist.trainers.ppo import train

    lines = []
    rows = read_metrics(train(lean_config(tiny_model, str(tmp_path / "run"), old_logprobs), log=lines.append))
    assert [r["step"] for r in rows] == [1, 2]
    started = {line.split(":")[0] for line in lines if ": rank 0 pid " in line}
    assert started == {"policy", "rollout"}, lines
    for row in rows:
        assert "timing/infer" not in row  # neither the reference nor the policy ran a pass before the update
        assert "kl/mean" not in row and "kl/sum_mean" not in row  # not computed, so not reported
        # Measured by the update's first forward: the engines computed with the learner's weights.
        assert 0.0 < row["rollout/engine_learner_logprob_diff_max"] < 1e-4
        assert row["sync/verified"] is True and "policy/loss" in row
        # Rule rewards without dynamic sampling are scored beside the step's passes, then waited for.
        assert row["timing/score_beside"] > 0 and row["timing/score"] >= 0
        assert row["reward/mean"] == pytest.approx(row["reward/math_verify_reward"])  # the one function, weight 1
    # Ratios are 1 at the first forward of an on-policy update, so nothing is clipped.
    assert all(r["policy/clipfrac"] == 0.0 for r in rows)
