"""Tensor-parallel engines placed by our code on logical GPUs: 2 engines x TP 2 on 4 GPUs take 4 distinct
bundles (engine actors hold none), generate, take a verified sync, and sample with the learner's weights."""
import json

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.data.tiny import WORDS

from tests.conftest import LOGICAL_GPUS, demo_config_dict


@pytest.mark.slow
def test_two_tp2_engines_own_four_bundles_and_match_the_learner(ray_session, tiny_model, tmp_path):
    from rlhf_dist.data.prompts import load_prompts
    from rlhf_dist.preflight import prepare_model
    from rlhf_dist.rewards.functions import RuleRewards
    from rlhf_dist.trainers.ppo import LoopState, rl_step
    from rlhf_dist.trainers.rl_roles import RLRoles

    assert LOGICAL_GPUS == 4
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"a {w} b"}) + "\n" for w in WORDS[:16]))
    d = demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"] = {
        "pools": {"main": {"nodes": 1, "gpus_per_node": 4}},
        "policy": {"pool": "main", "num_gpus": 2, "zero_stage": 2},
        "reference": {"pool": "main", "num_gpus": 1},
        "rollout": {"pool": "main", "num_engines": 2, "tensor_parallel_size": 2},
    }
    d["ppo"].update({"advantage_estimator": "grpo"})
    d["sync"] = {"bucket_mb": 0.25, "max_logprob_diff": 1e-3}
    cfg = load_config(None, base=d)
    roles = RLRoles(cfg)
    try:
        seats = [ray_session.get(s.gpus.remote()) for s in roles.rollout.seats]
        assert sorted((s["rank"], s["bundle"]) for s in seats) == [(0, 0), (0, 1), (1, 2), (1, 3)]
        assert len({tuple(s["gpu_ids"]) for s in seats}) == 4  # four different (logical) GPUs
        infos = roles.rollout.call("ready", timeout_s=60)
        assert [i["bundles"] for i in infos] == ["0,1", "2,3"] and all(i["gpu_ids"] == [] for i in infos)

        tokenizer = prepare_model(cfg, print)
        prompts = load_prompts(cfg.data, tokenizer)
        state = LoopState(cfg, prompts.ids, prompts.texts, prompts.labels, tokenizer, RuleRewards(cfg.reward.functions), roles)
        roles.sync_weights(0, verify=True)
        for step in (1, 2):
            # rl_step stops with a WeightSyncError if the engines' log-probs leave sync.max_logprob_diff.
            m = rl_step(cfg, roles, state, step)
            assert m["sync/verified"] is True and m["rollout/engine_learner_logprob_diff_max"] < 1e-3
        assert m["kl/mean"] != 0.0  # step 2 sampled with updated weights
    finally:
        roles.shutdown()
