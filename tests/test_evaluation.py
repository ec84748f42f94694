"""pass@k by hand and against the binomial formula; an eval section run in a GRPO job and on its saved policy."""
import json
import math
from pathlib import Path

import pytest

from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.rollout.evaluation import mean_pass_at_k, pass_at_k

ROOT = Path(__file__).resolve().parents[1]


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(3, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer wrong answers than draws: a correct one is always drawn
    assert pass_at_k(8, 8, 8) == 1.0
    assert mean_pass_at_k([0, 1, 4], 4, 1) == pytest.approx((0 + 0.25 + 1) / 3)


def test_pass_at_k_equals_the_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-9)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match="n=4, c=5, k=1"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def grpo_eval_config(tiny_model, out, *overrides):
    from tests.conftest import demo_config_dict

    d = demo_config_dict(tiny_model, str(ROOT / "configs/data/arith_prompts.jsonl"), out)
    d["data"].update(label_key="answer", max_prompt_tokens=16)
    d["rollout"].update(max_new_tokens=4, n_samples_per_prompt=4)
    d["reward"]["functions"] = [{"name": "rlhf_dist.rewards.math:math_verify_reward"},
                                {"name": "rlhf_dist.rewards.math:starts_with_number", "weight": 0.1}]
    d["ppo"].update(advantage_estimator="grpo", rollout_batch_size=4, mini_batch_size=16, micro_batch_size=8)
    d["placement"].pop("critic")
    d["placement"]["rollout"]["num_engines"] = 2
    d["eval"] = {"prompts": str(ROOT / "configs/data/arith_prompts.jsonl"), "label_key": "answer",
                 "every_n_steps": 1, "n_samples": 4, "k": [1, 4], "pass_function": "math_verify_reward"}
    return load_config(None, list(overrides), base=d)


def test_eval_section_errors(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"eval.k: 9 must be between 1 and eval.n_samples \(4\)"):
        grpo_eval_config(tiny_model, str(tmp_path / "o"), "eval.k=[1, 9]")
    with pytest.raises(ConfigError, match="eval: set greedy: true and/or n_samples > 0"):
        grpo_eval_config(tiny_model, str(tmp_path / "o"), "eval.greedy=false", "eval.n_samples=0", "eval.k=[1]")
    from rlhf_dist.rollout.evaluation import Evaluator
    from rlhf_dist.rewards.functions import RuleRewards
    from transformers import AutoTokenizer

    cfg = grpo_eval_config(tiny_model, str(tmp_path / "o"), "eval.pass_function=nope")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(ConfigError, match="eval.pass_function: 'nope' is not one of reward.functions"):
        Evaluator(cfg, tok, RuleRewards(cfg.reward.functions, has_labels=True), log=lambda _: None)
    cfg = grpo_eval_config(tiny_model, str(tmp_path / "o"), "eval.pass_function=null")
    assert Evaluator(cfg, tok, RuleRewards(cfg.reward.functions, has_labels=True), log=lambda _: None).pass_name is None
    cfg = grpo_eval_config(tiny_model, str(tmp_path / "o"), "eval.label_key=null")
    with pytest.raises(ConfigError, match="eval.label_key: reward function 'rlhf_dist.rewards.math:math_verify_reward' needs a label"):
        Evaluator(cfg, tok, RuleRewards(cfg.reward.functions, has_labels=True), log=lambda _: None)


@pytest.mark.slow
def test_eval_in_a_grpo_run_and_on_the_saved_policy(ray_session, tiny_model, tmp_path):
    from rlhf_dist.commands.evaluate import evaluate_saved_policy
    from rlhf_dist.metrics import read_metrics
    from rlhf_dist.trainers.ppo import train

    # 4 new tokens: most responses are cut at the limit, and mask_truncated leaves them out of the loss.
    run_dir = train(grpo_eval_config(tiny_model, str(tmp_path / "run"), "ppo.mask_truncated=true"))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]  # before training, then every step
    for r in rows[1:]:
        assert 0 <= r["response/truncated_fraction"] <= 1
        if r["response/truncated_fraction"] == 1:
            assert r["policy/loss"] == 0  # every token masked: nothing to train on
    for r in rows:
        for key in ("eval/greedy/pass@1", "eval/sampled/pass@1", "eval/sampled/pass@4", "eval/greedy/math_verify_reward",
                    "eval/sampled/starts_with_number", "eval/sampled/response_length"):
            assert 0 <= r[key] <= (4 if "length" in key else 1), (r["step"], key)
        assert r["eval/sampled/pass@4"] >= r["eval/sampled/pass@1"]
        assert r["eval/greedy/pass@1"] == r["eval/greedy/math_verify_reward"]  # exact-match reward: pass = reward

    # The saved policy evaluated on its own: the same metrics, recomputable from the written responses.
    out = evaluate_saved_policy(grpo_eval_config(str(run_dir / "final"), str(tmp_path / "alone")), log=lambda _: None)
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["policy"] == str(run_dir / "final")
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    sampled = [s for s in samples if s["mode"] == "sampled"]
    assert len(sampled) == 25 * 4 and len(samples) == 25 * 5
    correct = [sum(s["math_verify_reward"] >= 1 for s in sampled[i * 4 : (i + 1) * 4]) for i in range(25)]
    for k in (1, 4):
        assert metrics[f"eval/sampled/pass@{k}"] == pytest.approx(mean_pass_at_k(correct, 4, k))
    greedy = [s for s in samples if s["mode"] == "greedy"]
    assert metrics["eval/greedy/pass@1"] == pytest.approx(sum(s["math_verify_reward"] for s in greedy) / 25)
