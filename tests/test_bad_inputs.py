"""Bad configs and data: each gets one clear message naming the field or file:line, exit code 2, and no
traceback, before any actor starts (the CLI is run in-process; no Ray session is used)."""
import json
from pathlib import Path

import pytest
import yaml

from rlhf_dist.cli import main

from tests.conftest import demo_config_dict

GOOD_PROMPTS = [{"prompt": "the red cat", "answer": "1"}, {"prompt": "a big dog", "answer": "2"}]

# (id, overrides applied to a valid config, data lines or None for the good file, expected message part)
CASES = [
    ("unknown-top-key", ["bogus=1"], None, "bogus: unknown key"),
    ("unknown-nested-key", ["ppo.mini_batch_sise=4"], None, "ppo.mini_batch_sise: unknown key"),
    ("wrong-type", ["run.steps=many"], None, "run.steps: Input should be a valid integer"),
    ("steps-zero", ["run.steps=0"], None, "run.steps: Input should be greater than or equal to 1"),
    ("mini-not-dividing", ["ppo.mini_batch_size=6"], None, "ppo.mini_batch_size: 6 does not divide the samples per step"),
    ("micro-not-dividing", ["ppo.micro_batch_size=8"], None, "is not a multiple of micro_batch_size x policy ranks"),
    ("zero-stage", ["placement.policy.zero_stage=4"], None, "placement.policy.zero_stage"),
    ("unknown-pool", ["placement.critic.pool=gpu"], None, "placement.critic.pool: 'gpu' is not one of placement.pools"),
    ("pool-too-small", ["placement.policy.num_gpus=4", "ppo.micro_batch_size=2"], None, "placement.policy: needs 4 GPUs but pool 'main' has 2"),
    ("no-reward", ["reward.functions=[]"], None, "set reward.model and/or reward.functions"),
    ("rm-without-role", ["reward.model=/tmp"], None, "placement.reward: reward.model is set"),
    ("kl-estimator", ["ppo.kl_estimator=k7"], None, "ppo.kl_estimator"),
    ("temperature", ["rollout.temperature=0"], None, "rollout.temperature: Input should be greater than 0"),
    ("tp-wider-than-node", ["placement.rollout.tensor_parallel_size=4", "placement.rollout.num_engines=1",
                            "placement.pools.main.nodes=2"], None, "placement.rollout.tensor_parallel_size: 4 exceeds the GPUs per node"),
    ("grpo-one-sample", ["ppo.advantage_estimator=grpo", "rollout.n_samples_per_prompt=1", "ppo.rollout_batch_size=16"],
     None, "rollout.n_samples_per_prompt: advantage estimator 'grpo' compares samples"),
    ("grpo-kl-reward", ["ppo.advantage_estimator=grpo", "ppo.kl_coef=0.1"], None, "ppo.kl_coef: 'grpo' computes advantages"),
    ("gae-no-critic", ["placement.critic=null"], None, "placement.critic: advantage estimator 'gae' trains a critic"),
    ("kl-target-no-coef", ["ppo.kl_target=0.1"], None, "ppo.kl_target: the adaptive controller scales ppo.kl_coef"),
    ("clip-higher-no-high", ["ppo.policy_loss=clip_higher"], None, "ppo.clip_eps_high: policy_loss 'clip_higher' needs"),
    ("overlong-buffer", ["ppo.overlong_buffer=12"], None, "ppo.overlong_buffer: 12 must be smaller than rollout.max_new_tokens"),
    ("restarts-no-ckpt", ["fault_tolerance.max_restarts=2"], None, "fault_tolerance.max_restarts: restarts resume from"),
    ("reward-name-format", ["reward.functions=[{name: nocolon}]"], None, "reward.functions name 'nocolon' must look like"),
    ("reward-module", ["reward.functions=[{name: 'no_such_module:f'}]"], None, "cannot import 'no_such_module'"),
    ("reward-attr", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:nope'}]"], None, "has no function 'nope'"),
    ("reward-needs-label", ["reward.functions=[{name: 'rlhf_dist.rewards.math:math_verify_reward'}]"], None,
     "needs a `label`: set data.label_key"),
    ("reward-timeout", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', timeout_s: 0}]"], None,
     "timeout_s: Input should be greater than 0"),
    ("model-missing", ["model.policy=/nonexistent/model"], None, "model.policy: '/nonexistent/model' is not a HuggingFace model directory"),
    ("reference-missing", ["model.reference=./no/ref"], None, "model.reference: './no/ref' is not a HuggingFace model directory"),
    ("too-long-for-model", ["rollout.max_new_tokens=300"], None, "exceeds the policy's max_position_embeddings (256)"),
    ("resume-nothing", ["resume=auto"], None, "resume=auto: no complete checkpoint under"),
    ("resume-bad-path", ["resume=/tmp"], None, "resume: '/tmp' is not a complete checkpoint directory"),
    ("override-syntax", ["run.steps"], None, "override 'run.steps' must look like dotted.key=value"),
    ("data-missing-file", ["data.prompts=/nonexistent.jsonl"], None, "data.prompts: '/nonexistent.jsonl' does not exist"),
    ("data-empty", [], [], "has no usable prompts"),
    ("data-malformed-json", [], ['{"prompt": "ok"}', '{"prompt": "unclosed'], ":2: malformed JSON"),
    ("data-missing-field", [], ['{"prompt": "ok"}', '{"text": "x"}'], ":2: missing field 'prompt' (data.prompt_key)"),
    ("data-empty-prompt", [], ['{"prompt": "   "}'], ":1: field 'prompt' must be a non-empty string"),
    ("data-non-utf8", [], [b'{"prompt": "caf\xe9"}'], ":1: not UTF-8"),
    ("data-too-long", ["data.max_prompt_tokens=3"], ['{"prompt": "the red cat runs fast and the dog"}'],
     ":1: prompt has 10 tokens, more than data.max_prompt_tokens=3"),
    ("data-missing-label", ["data.label_key=answer"], ['{"prompt": "ok", "answer": "1"}', '{"prompt": "no answer"}'],
     ":2: missing field 'answer' (data.label_key)"),
    ("data-all-skipped", ["data.skip_bad_lines=true"], ['nope', '{"x": 1}'], "has no usable prompts (2 skipped)"),
]


def write_lines(path: Path, lines) -> None:
    with path.open("wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(case, tiny_model, tmp_path, capsys):
    _, overrides, lines, expected = case
    prompts = tmp_path / "prompts.jsonl"
    write_lines(prompts, [json.dumps(p) for p in GOOD_PROMPTS] if lines is None else lines)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))))
    assert main(["train", str(cfg), *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    assert err.count("\n") <= 3, err  # one message, not a dump
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_table_is_large_enough():
    assert len({c[0] for c in CASES}) >= 30


def test_skip_bad_lines_counts_and_keeps_good_ones(tiny_model, tmp_path):
    from rlhf_dist.config import DataConfig
    from rlhf_dist.data.prompts import load_prompts
    from transformers import AutoTokenizer

    path = tmp_path / "p.jsonl"
    write_lines(path, ['{"prompt": "one", "answer": "1"}', "garbage", b'\xff\xfe', '{"prompt": "two", "answer": "2"}'])
    got = load_prompts(DataConfig(prompts=str(path), label_key="answer", skip_bad_lines=True), AutoTokenizer.from_pretrained(tiny_model))
    assert got.texts == ["one", "two"] and got.labels == ["1", "2"]
    assert [s.split(":")[-2] for s in got.skipped] == ["2 malformed JSON", "3 not UTF-8 (invalid start byte at byte 0)"] or len(got.skipped) == 2
    assert f"{path}:2: malformed JSON" in got.skipped[0] and f"{path}:3: not UTF-8" in got.skipped[1]
