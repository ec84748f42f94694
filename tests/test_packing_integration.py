"""Token-budget micro-batches with packed rows end to end (real Ray, DeepSpeed on gloo, vLLM): 2 GRPO steps with 2
ZeRO-2 policy ranks and a reference sharded over 2 ZeRO-3 ranks (whose forward passes run in lockstep, so every
rank must get as many micro-batches), against the same run by count. With the per-sequence aggregation a
micro-batch's mean over equal-count micro-batches is the mini-batch's, so the two runs must take the same
gradients: the gradient norm, rewards and KL agree step for step, with less padding computed."""
from pathlib import Path

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

PROMPTS = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_prompts.jsonl")


def config(model_dir: str, out: str, *overrides: str):
    d = demo_config_dict(model_dir, PROMPTS, out)
    d["ppo"].update({"advantage_estimator": "grpo", "loss_aggregation": "seq_mean_token_mean", "kl_loss_coef": 0.05,
                     "rollout_batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 2})
    d["placement"].pop("critic")
    d["placement"]["policy"]["zero_stage"] = 2
    d["placement"]["reference"] = {"pool": "main", "num_gpus": 2, "zero_stage": 3}
    d["placement"]["rollout"]["num_engines"] = 1
    return load_config(None, overrides=list(overrides), base=d)


@pytest.mark.slow
def test_token_budget_packed_run_takes_the_count_runs_gradients(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.ppo import train

    by_count = read_metrics(train(config(tiny_model, str(tmp_path / "count"))))
    # 44 tokens is the longest sequence (32 + 12): micro-batches of one to several samples.
    lines = []
    packed = read_metrics(train(config(tiny_model, str(tmp_path / "packed"), "ppo.micro_batch_tokens=48", "ppo.packing=true",
                                       "ppo.infer_micro_batch_tokens=96"), log=lines.append))
    assert any("48 tokens, packed / 96 tokens, packed" in line for line in lines)  # the derived table
    assert [r["step"] for r in by_count] == [r["step"] for r in packed] == [1, 2]
    for a, b in zip(by_count, packed):
        assert b["policy/grad_norm"] == pytest.approx(a["policy/grad_norm"], rel=1e-4)
        for key in ("reward/mean", "kl/mean", "advantages/mean"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
        assert b["rollout/engine_learner_logprob_diff_max"] < 1e-4  # packed policy pass against the engines
        assert b["policy/padding_fraction"] < a["policy/padding_fraction"]
