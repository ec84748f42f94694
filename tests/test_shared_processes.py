"""placement.share_processes end to end (real Ray, DeepSpeed on gloo, vLLM): policy and critic rank r share one
process (the reference joins rank 0's), the engine keeps its own, and the run trains exactly as with a process
per rank: same rewards, KL, losses and values, step for step."""
from pathlib import Path

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

PROMPTS = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_prompts.jsonl")
SAME = ["reward/mean", "kl/mean", "policy/loss", "policy/grad_norm", "critic/loss", "values/mean", "advantages/mean",
        "rollout/engine_learner_logprob_diff_max"]


def config(model_dir: str, out: str, share: bool):
    d = demo_config_dict(model_dir, PROMPTS, out)
    d["ppo"]["kl_coef"] = 0.05
    d["placement"].update({"share_processes": share, "policy": {"pool": "main", "num_gpus": 2, "zero_stage": 2},
                           "rollout": {"pool": "main", "num_engines": 1}})
    return load_config(None, base=d)


@pytest.mark.slow
def test_shared_processes_train_as_separate_ones(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.ppo import train

    runs = {}
    for share in (False, True):
        lines = []
        runs[share] = read_metrics(train(config(tiny_model, str(tmp_path / f"run-{share}"), share), log=lines.append))
        pids = {line.split(":")[0]: line for line in lines if ": rank 0 pid " in line}
        rank_pids = {role: [part.split(" pid ")[1].split(" ")[0] for part in line.split(": ", 1)[1].split(", ")]
                     for role, line in pids.items()}
        if share:
            assert rank_pids["policy"] == rank_pids["critic"] and len(set(rank_pids["policy"])) == 2, lines
            assert rank_pids["reference"] == rank_pids["policy"][:1], lines
            assert rank_pids["rollout"][0] not in rank_pids["policy"], lines
            assert any("(6 actors in 3 processes)" in line for line in lines), lines
        else:
            assert len({p for ps in rank_pids.values() for p in ps}) == 6, lines
    assert len(runs[False]) == len(runs[True]) == 2
    for alone, shared in zip(runs[False], runs[True]):
        assert {k: alone[k] for k in SAME} == {k: shared[k] for k in SAME}, alone["step"]
