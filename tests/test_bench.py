"""The benchmarks run end to end on CPU and write their tables' rows as JSON. No timing is asserted:
speed figures belong in benchmarks/README.md, not in tests."""
import json
from pathlib import Path

import pytest

from rlhf_dist.commands.cli import main

from tests.conftest import demo_config_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tiny_model, tmp_path):
    import yaml

    d = demo_config_dict(tiny_model, str(ROOT / "configs/data/demo_prompts.jsonl"), str(tmp_path / "run"))
    d["placement"]["rollout"]["num_engines"] = 1
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


@pytest.mark.slow
def test_bench_rollout_compares_with_vllm_direct(ray_session, config, tmp_path, capsys):
    out = tmp_path / "rollout.json"
    assert main(["bench", "rollout", config, "--prompts", "8", "--prompt-len", "8", "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    paths = [r["path"] for r in result["rows"]]
    assert paths == ["rlhf_dist engines", "vLLM direct"] * 2  # the two sides alternate
    # Same prompts, same per-request seeds: both sides generate the same number of tokens.
    assert result["rows"][0]["tokens"] == result["rows"][1]["tokens"] > 0
    assert {s["path"] for s in result["summary"]} == {"rlhf_dist engines", "vLLM direct"}
    assert "median_tokens_per_s" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_rollout_on_an_agent_config_compares_per_sample_with_per_turn_and_single_turn(ray_session, tmp_path):
    """Same seeds for both multi-turn rows; the single-turn row generates exactly the tokens the episodes sampled."""
    import yaml

    d = yaml.safe_load((ROOT / "configs/agent_cpu.yaml").read_text())
    d["model"]["policy"] = str(tmp_path / "chat-model")
    d["data"]["prompts"] = str(ROOT / d["data"]["prompts"])
    d["run"]["output_dir"] = str(tmp_path / "run")
    d["placement"]["policy"]["num_gpus"] = d["placement"]["reference"]["num_gpus"] = 1
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(d))
    out = tmp_path / "agent.json"
    assert main(["bench", "rollout", str(tmp_path / "agent.yaml"), "--prompts", "8", "--repeats", "1", "--tool-latency-s", "0.05",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    per_sample, per_turn, single = result["rows"]
    assert [per_sample["path"], per_turn["path"], single["path"]] == ["per-sample advancement", "per-turn batches",
                                                                      "single-turn, same tokens"]
    assert per_sample["episodes"] == per_turn["episodes"] == 8 and per_sample["turns_mean"] == per_turn["turns_mean"] == 2
    assert single["tokens"] == per_sample["tokens"] > 0  # equal work: the episodes' sampled tokens, generated in one turn
    # Every episode's step slept its latency (0.025 to 0.1 s, one step per turn): the environment's seconds show it.
    assert per_sample["env_s"] >= 8 * 2 * 0.025


@pytest.mark.slow
def test_bench_sync_compares_with_raw_broadcast(ray_session, config, tmp_path):
    out = tmp_path / "sync.json"
    assert main(["bench", "sync", config, "--bucket-mb", "0.25", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["path"] for r in rows] == ["rlhf_dist sync", "raw torch.distributed (gloo)"]
    assert rows[0]["MB"] == rows[1]["MB"] > 0 and all(r["GB_per_s"] > 0 for r in rows)
    # The verification's cost: the same weights synced with and without it, one pair per repeat.
    cost = result["verification"]
    assert [r["repeat"] for r in cost["rows"]] == [1] and cost["median_verified_s"] > 0 and cost["median_unverified_s"] > 0
    assert cost["share_of_sync"] == pytest.approx(1 - cost["median_unverified_s"] / cost["median_verified_s"])


@pytest.mark.slow
def test_bench_step_breaks_the_step_into_phases(ray_session, config, tmp_path):
    import yaml

    # With an eval section, as the demo has: its row before step 1 is no step.
    d = yaml.safe_load(Path(config).read_text())
    d["eval"] = {"prompts": str(ROOT / "configs/data/demo_eval_prompts.jsonl"), "every_n_steps": 0, "greedy": True}
    Path(config).write_text(yaml.safe_dump(d))
    out = tmp_path / "step.json"
    assert main(["bench", "step", config, "--steps", "2", "--run-dir", str(tmp_path / "bench-run"), "--out", str(out),
                 "--limit-repeats", "1"]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        parts = r["generate"] + r["score"] + r["infer"] + r["update"] + r["sync"] + r["other"]
        assert parts == pytest.approx(r["step_s"], rel=1e-6)
        assert 0 <= r["outside_compute"] < 1
    # The limits, measured in the same run on the last step's work, and the step's ratio to their sum.
    limits, summary = result["limits"], result["limit_summary"]
    assert all(len(limits["runs"][k]) == 1 and limits[k] > 0 for k in ("generate", "update", "broadcast"))
    assert limits["weight_MB"] > 0
    # Equal work: the same prompts and response lengths (both sides' tokens), the weights the step started from.
    assert limits["step"] == 2 and rows[1]["tokens"] > 0
    assert limits["generate_tokens"] == limits["step_tokens"] == rows[1]["tokens"] and summary["equal_work"] is True
    samples = d["ppo"]["rollout_batch_size"] * d["rollout"]["n_samples_per_prompt"]
    assert limits["prompt_tokens"] >= samples
    weights = Path(limits["weights"])
    assert weights.parent == tmp_path / "bench-run" and weights.name == "weights_before_step_2"
    assert (weights / "model.safetensors").is_file() and (weights / "tokenizer.json").is_file()
    # The limit's update goes over the batch as the learner's does: epochs x mini-batches optimizer steps.
    p = d["ppo"]
    assert limits["optimizer_steps"] == p["epochs"] * -(-samples // p["mini_batch_size"])
    assert [r["what"] for r in summary["rows"]] == ["generate", "update", "sync", "step"]
    step_row = summary["rows"][-1]
    assert step_row["limit_s"] == pytest.approx(limits["generate"] + limits["update"] + limits["broadcast"])
    assert summary["step"] == 2 and summary["ratio"] == pytest.approx(rows[1]["step_s"] / step_row["limit_s"])
    assert summary["rows"][0]["step_tokens"] == summary["rows"][0]["limit_tokens"] == rows[1]["tokens"]


def test_overlap_efficiency_against_the_ideal():
    from rlhf_dist.commands.bench import overlap, overlap_summary

    # Generate 2 s and train 1 s one after the other: step 3 s, efficiency 1, ideal 3 / 2.
    assert overlap(2.0, 1.0, 3.0) == pytest.approx({"train": 1.0, "overlap_eff": 1.0, "ideal_eff": 1.5, "of_ideal": 2 / 3})
    # Fully overlapped: the step takes as long as the longer side.
    assert overlap(2.0, 1.0, 2.0)["of_ideal"] == pytest.approx(1.0)
    rows = [{"generate": 9.0, "train": 1.0, "step_s": 10.0, **overlap(9.0, 1.0, 10.0)}] + [
        {"generate": 2.0, "train": 1.0, "step_s": s, **overlap(2.0, 1.0, s)} for s in (2.0, 2.5, 3.0)]
    assert overlap_summary(rows)["step_s"] == 2.5  # the first step is left out


def test_bench_collect_counts_every_vote(tmp_path, capsys):
    out = tmp_path / "collect.json"
    assert main(["bench", "collect", "--annotators", "4", "--votes", "24", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["votes"] == 24 and row["annotators"] == 4
    assert (row["lost"], row["duplicated"], row["unacknowledged"], row["shared_items"], row["errors"]) == (0, 0, 0, 0, [])
    assert row["p50_ms"] <= row["p99_ms"] and result["ok"] is True
    assert "votes_per_s" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_learner_runs_padded_and_packed_on_the_same_batch(ray_session, config, tmp_path, capsys):
    out = tmp_path / "learner.json"
    assert main(["bench", "learner", config, "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    ways = list(dict.fromkeys(r["way"] for r in rows))
    assert ways == ["padded, 4 samples", "padded, 176 tokens", "packed, 176 tokens"]  # 4 x (32 + 12) positions
    assert [(r["way"], r["pass"]) for r in rows] == [(w, p) for w in ways for p in ("update", "infer")]
    assert len(set(result["response_lengths"])) > 3  # widely varying responses
    for what in ("update", "infer"):
        by_way = {r["way"]: r for r in rows if r["pass"] == what}
        assert len({r["tokens"] for r in by_way.values()}) == 1  # the same real tokens every way
        pads = [by_way[w]["padding_fraction"] for w in ways]
        assert pads[0] > pads[1] > pads[2] >= 0
    assert [s["vs_padded"] for s in result["speedup"] if s["way"] == ways[0]] == [1.0, 1.0]
    assert "vs_padded" in capsys.readouterr().out
