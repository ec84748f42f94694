"""The preference stages end to end on CPU with real Ray, DeepSpeed (gloo) and vLLM: the pipeline command
(SFT -> RM -> PPO against that RM) from configs/pipeline_cpu, DPO under ZeRO-3, and AI-feedback labelling with
each kind of judge."""
import json
import math

import pytest
import torch

from rlhf_dist.metrics import read_metrics
from rlhf_dist.config.stages import load_stage_config

PIPELINE = "configs/pipeline_cpu"


@pytest.fixture(scope="module")
def pipeline(ray_session, tiny_model, tmp_path_factory):
    from rlhf_dist.trainers.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    overrides = [
        f"sft:model.path={tiny_model}", "sft:model.make_tiny=false", f"sft:run.output_dir={tmp}/sft",
        "sft:run.progress_bar=false", "rm:train.epochs=1", f"rm:run.output_dir={tmp}/rm",
        "ppo:run.steps=3", f"ppo:run.output_dir={tmp}/ppo", "ppo:run.progress_bar=false",
    ]
    return run_pipeline(PIPELINE, overrides)


@pytest.mark.slow
def test_sft_loss_falls_on_held_out_demonstrations(pipeline):
    rows = read_metrics(pipeline["sft"])
    evals = [r["eval/sft/loss"] for r in rows if "eval/sft/loss" in r]
    assert rows[0]["step"] == 0 and len(evals) >= 3
    assert evals[-1] < 0.3 * evals[0], evals
    assert all(r["sft/tokens"] > 0 for r in rows[1:])


@pytest.mark.slow
def test_reward_model_separates_held_out_pairs_and_is_saved_for_ppo(pipeline):
    from transformers import AutoModelForSequenceClassification

    rows = read_metrics(pipeline["rm"])
    assert rows[0]["eval/rm/accuracy"] < 0.9  # a fresh head does not yet separate the pairs
    assert rows[-1]["eval/rm/accuracy"] >= 0.9, rows[-1]
    final = pipeline["rm"] / "final"
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["apply_chat_template"] is False  # the format PPO must score it on (pipeline_cpu: plain text)
    assert stats["n"] > 0 and stats["std"] > 0 and math.isfinite(stats["mean"])
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


@pytest.mark.slow
def test_ppo_scores_rollouts_with_the_trained_reward_model(pipeline):
    import yaml

    cfg = yaml.safe_load((pipeline["ppo"] / "config.yaml").read_text())
    assert cfg["reward"]["model"] == str(pipeline["rm"] / "final")
    assert cfg["model"]["policy"] == str(pipeline["sft"] / "final")
    rows = read_metrics(pipeline["ppo"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["reward/reward_model"]) and r["reward/mean"] == pytest.approx(r["reward/reward_model"], abs=1e-5)
        assert r["sync/verified"] is True


@pytest.mark.slow
def test_ppo_reward_role_scores_as_training_did(pipeline):
    """The PPO reward role, with reward.model_normalize, gives (score - mean) / std of the trained model's own
    score for the same text; and it prefers pleasant words, as the preferences did."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_dist.config import load_config
    from rlhf_dist.learner.frozen import RewardModelWorker
    from rlhf_dist.trainers.rl_roles import reward_spec

    cfg = load_config(pipeline["ppo"] / "config.yaml")
    worker = RewardModelWorker(reward_spec(cfg), rank=0, world_size=1)
    worker.setup()
    pairs = [("the cat is", " good and happy"), ("the cat is", " bad and sad")]
    texts = [p + r for p, r in pairs]
    got = worker.score(pairs)
    final = pipeline["rm"] / "final"
    stats = json.loads((final / "reward_stats.json").read_text())
    model, tok = AutoModelForSequenceClassification.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)
    with torch.no_grad():
        for text, g in zip(texts, got):
            raw = model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0, 0].item()
            assert g == pytest.approx((raw - stats["mean"]) / stats["std"], abs=1e-4)
    assert got[0] > got[1]


def dpo_config(tiny_model, tmp, *overrides):
    return load_stage_config(
        "dpo", f"{PIPELINE}/dpo.yaml",
        [f"model.path={tiny_model}", "model.make_tiny=false", f"run.output_dir={tmp}", "run.progress_bar=false",
         "run.tensorboard=false", *overrides],
    )


@pytest.mark.slow
def test_dpo_under_zero3_raises_the_implicit_reward_margin(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.stages import run_stage

    run = run_stage("dpo", dpo_config(tiny_model, tmp_path / "dpo", "placement.learner.zero_stage=3", "train.max_steps=20"))
    rows = read_metrics(run)
    # Before the first step the policy is its reference: every implicit reward is 0.
    assert rows[0]["step"] == 0 and abs(rows[0]["eval/dpo/margin"]) < 1e-4
    assert rows[0]["eval/dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)
    last = rows[-1]
    assert last["step"] == 20 and last["eval/dpo/margin"] > 0.5 and last["eval/dpo/accuracy"] >= 0.9, last
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "final").num_parameters() > 0


@pytest.mark.slow
def test_ipo_with_a_separate_reference_model(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.stages import run_stage

    cfg = dpo_config(tiny_model, tmp_path / "ipo", f"model.reference={tiny_model}", "dpo.loss=ipo", "train.max_steps=10",
                     "train.eval_every=0")
    rows = read_metrics(run_stage("dpo", cfg))
    assert abs(rows[0]["eval/dpo/margin"]) < 1e-4  # the loaded reference equals the starting policy
    assert rows[-1]["eval/dpo/margin"] > rows[0]["eval/dpo/margin"] + 0.1, rows[-1]


def label_run(tiny_model, tmp, *overrides):
    from rlhf_dist.trainers.label import run_label

    cfg = load_stage_config(
        "label", f"{PIPELINE}/label.yaml",
        [f"model.policy={tiny_model}", "model.make_tiny=false", f"run.output_dir={tmp}", *overrides],
    )
    run = run_label(cfg)
    return [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines()], run


def readable_by_rm(run, tiny_model):
    from transformers import AutoTokenizer

    from rlhf_dist.data.stage_data import load_examples
    from rlhf_dist.config.stages import StageData

    path = str(run / "preferences.jsonl")
    return load_examples(path, "data.train", "rm", StageData(train=path), AutoTokenizer.from_pretrained(tiny_model))


@pytest.mark.slow
def test_label_with_a_function_judge_from_the_example_config(ray_session, tiny_model, tmp_path):
    from rlhf_dist.data.synthetic import pleasant_score

    rows, run = label_run(tiny_model, tmp_path / "fn")
    assert rows, "no pairs written"
    for r in rows:
        assert r["chosen_score"] == pleasant_score(r["prompt"], r["chosen"]) > r["rejected_score"] == pleasant_score(r["prompt"], r["rejected"])
    assert len(readable_by_rm(run, tiny_model)) == len(rows)
    log = (run / "train.log").read_text()
    assert f"wrote {len(rows)} preference pairs" in log


@pytest.mark.slow
def test_label_with_an_llm_judge_reads_its_verdict_from_logprobs(ray_session, tiny_model, tmp_path):
    rows, run = label_run(
        tiny_model, tmp_path / "llm", "judge.kind=llm", "judge.function=null", "rollout.n_samples_per_prompt=2",
        "judge.max_prompt_tokens=128",
        "placement.pools.main.gpus_per_node=2", "placement.judge.pool=main",
    )
    assert rows
    for r in rows:
        # Two samples, each compared in both orders: the two win probabilities sum to 1.
        assert r["chosen_score"] + r["rejected_score"] == pytest.approx(1.0, abs=1e-5)
        assert r["chosen_score"] > 0.5 > r["rejected_score"] and r["judge"] == "llm"
    assert len(readable_by_rm(run, tiny_model)) == len(rows)


def test_llm_judge_prompt_must_fit_the_judge_model(tiny_model, tmp_path):
    from rlhf_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"judge.max_prompt_tokens \+ 16 = 528 exceeds the judge's max_position_embeddings \(256\)"):
        label_run(tiny_model, tmp_path / "x", "judge.kind=llm", "judge.function=null", "placement.judge.pool=main")
    assert not (tmp_path / "x").exists()  # refused before a run directory or an actor


@pytest.mark.slow
def test_label_with_the_trained_reward_model_as_judge(pipeline, tiny_model, tmp_path):
    rows, run = label_run(
        tiny_model, tmp_path / "rm", "judge.kind=reward_model", "judge.function=null",
        f"judge.model={pipeline['rm'] / 'final'}", "placement.pools.main.gpus_per_node=2", "placement.judge.pool=main",
    )
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)


@pytest.mark.slow
def test_dpo_resumed_from_a_checkpoint_equals_an_uninterrupted_run(ray_session, tiny_model, tmp_path):
    """Optimizer state, batch order and the reference log-probs (which the moved model could no longer
    give) come back from the checkpoint."""
    from rlhf_dist.trainers.stages import run_stage

    common = ["train.eval_every=2", "run.tensorboard=false"]
    full = run_stage("dpo", dpo_config(tiny_model, tmp_path / "full", "train.max_steps=4", *common))
    part = run_stage("dpo", dpo_config(tiny_model, tmp_path / "part", "train.max_steps=2", "checkpoint.every_n_steps=2", *common))
    assert (part / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    mine = tmp_path / "users-file.txt"  # links planted in the saved model's directory are replaced, never followed
    mine.write_text("the user's own file\n")
    for planted in (part / "final" / "config.json", part / "final" / "model.safetensors"):
        planted.unlink()
        planted.symlink_to(mine)
    resumed = run_stage("dpo", dpo_config(tiny_model, tmp_path / "part", "train.max_steps=4", "resume=auto", *common))
    assert mine.read_text() == "the user's own file\n" and not any(p.is_symlink() for p in (part / "final").iterdir())
    assert resumed == part
    want, got = read_metrics(full), read_metrics(resumed)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3, 4]
    for w, g in zip(want, got):
        for k in ("dpo/loss", "dpo/margin", "eval/dpo/loss", "eval/dpo/margin"):
            if k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (w["step"], k)
    assert "resumed from" in (part / "train.log").read_text()
