"""The bad-input table for every command besides train (which has its own table): config files, stages,
labelling, export, make-tiny-model, pipeline, plan, bench and the command line itself. Each case exits with
code 2 and one line naming the field, file or row, no traceback, and leaves every file as it was."""
import json
from pathlib import Path

import pytest
import yaml

from rlhf_dist.commands.cli import main

from tests.conftest import demo_config_dict
from tests.test_bad_inputs import broken, tree  # noqa: F401 - `broken` is a fixture

P = "configs/pipeline_cpu"
PREFS = "configs/data/pipeline/prefs.jsonl"


def stage(kind: str, *extra: str) -> list[str]:
    return [kind, f"{P}/{kind}.yaml", "model.path={model}", "model.make_tiny=false", "run.output_dir={tmp}/run",
            "run.progress_bar=false", "run.tensorboard=false", *extra]


def label(*extra: str) -> list[str]:
    return ["label", f"{P}/label.yaml", "model.policy={model}", "model.make_tiny=false", "run.output_dir={tmp}/run", *extra]


HUGE = json.dumps({"prompt": "the sun " * 100000, "response": " is hot"})
RM = stage("rm", "data.train={tmp}/d.jsonl", "data.margin_key=m")
CKPT = "{ckpts}/%s/checkpoints/step_00000001"

# (id, argv, files written under {tmp} first, expected message part)
CASES = [
    # --- config files ---
    ("config-missing", ["train", "{tmp}/nope.yaml"], {}, "config file '{tmp}/nope.yaml' does not exist"),
    ("config-is-directory", ["train", "{tmp}"], {}, "config file '{tmp}' is a directory"),
    ("config-not-utf8", ["train", "{tmp}/c.yaml"], {"c.yaml": b"run:\n  name: caf\xe9\n"}, "c.yaml:2: not UTF-8"),
    ("config-bad-yaml", ["train", "{tmp}/c.yaml"], {"c.yaml": "run:\n  name: [x\nmodel: {}\n"}, "c.yaml:3: not valid YAML"),
    ("config-tab-indent", ["train", "{tmp}/c.yaml"], {"c.yaml": "run:\n\tname: x\n"}, "c.yaml:2: not valid YAML"),
    ("config-top-level-list", ["train", "{tmp}/c.yaml"], {"c.yaml": "- 1\n- 2\n"}, "the top level must be a mapping of sections"),
    ("config-empty", ["train", "{tmp}/c.yaml"], {"c.yaml": ""}, "model: Field required"),
    ("stage-config-not-utf8", ["sft", "{tmp}/c.yaml"], {"c.yaml": b"\xff\xfe"}, "c.yaml:1: not UTF-8"),
    # --- sft / rm / dpo ---
    ("sft-nan-lr", stage("sft", "train.lr=.nan"), {}, "train.lr: Input should be a finite number"),
    ("sft-inf-weight-decay", stage("sft", "train.weight_decay=.inf"), {}, "train.weight_decay: Input should be a finite number"),
    ("sft-nan-eval-fraction", stage("sft", "data.eval_fraction=.nan"), {}, "data.eval_fraction: Input should be a finite number"),
    ("sft-data-is-directory", stage("sft", "data.train={tmp}"), {}, "data.train: '{tmp}' is a directory, not a file"),
    ("sft-eval-missing", stage("sft", "data.eval={tmp}/nope.jsonl"), {}, "data.eval: '{tmp}/nope.jsonl' does not exist"),
    ("sft-output-is-file", stage("sft", "run.output_dir={tmp}/x.txt"), {"x.txt": "x"}, "run.output_dir: '{tmp}/x.txt' is a file"),
    ("sft-model-masked-lm", stage("sft", "model.path={models}/masked-lm"), {}, "model.path: {models}/masked-lm is a BertForMaskedLM"),
    ("sft-no-tokenizer", stage("sft", "model.path={models}/no-tokenizer"), {}, "model.path: {models}/no-tokenizer has no tokenizer"),
    ("sft-bad-weights", stage("sft", "model.path={models}/truncated"), {}, "truncated/model.safetensors: tensor"),
    ("sft-enormous-row", stage("sft", "data.train={tmp}/d.jsonl"), {"d.jsonl": HUGE + "\n"},
     "d.jsonl:1: 800000 bytes, more than data.max_length=32 tokens can hold (not tokenized)"),
    ("sft-missing-response", stage("sft", "data.train={tmp}/d.jsonl"), {"d.jsonl": '{"prompt": "x"}\n'},
     "d.jsonl:1: missing field 'response' (data.response_key)"),
    ("sft-resume-not-step-n", stage("sft", "resume={ckpts}/bad-name/checkpoints/latest"), {}, "latest' is not named step_N"),
    ("rm-margin-nan", RM, {"d.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c", "m": NaN}\n'},
     "d.jsonl:1: field 'm' (data.margin_key) must be a number, finite (not nan)"),
    ("rm-margin-infinity", RM, {"d.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c", "m": -Infinity}\n'},
     "must be a number, finite (not -inf)"),
    ("rm-margin-string", RM, {"d.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c", "m": "1"}\n'},
     "d.jsonl:1: field 'm' (data.margin_key) must be a number"),
    ("rm-same-texts", RM[:-1], {"d.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "b"}\n'}, "chosen and rejected are the same text"),
    ("dpo-nan-beta", stage("dpo", "dpo.beta=.nan"), {}, "dpo.beta: Input should be a finite number"),
    ("dpo-reference-masked-lm", stage("dpo", "model.reference={models}/masked-lm"), {}, "model.reference: {models}/masked-lm is a BertForMaskedLM"),
    ("dpo-resume-crafted", stage("dpo", "resume=" + CKPT % "crafted"), {}, "refused to unpickle (it calls io.open"),
    ("dpo-resume-no-config", stage("dpo", "resume=" + CKPT % "no-config"), {}, "no-config/config.yaml' does not exist"),
    # --- label ---
    ("label-judge-signature", label("judge.function={name: 'tests.helpers:prompt_only'}"), {}, "cannot be called as prompt_only(prompt, response)"),
    ("label-judge-import-fails", label("judge.function={name: 'tests.broken_reward_module:f'}"), {}, "importing 'tests.broken_reward_module' failed"),
    ("label-nan-temperature", label("rollout.temperature=.nan"), {}, "rollout.temperature: Input should be a finite number"),
    ("label-policy-seq-cls", label("model.policy={models}/seq-cls"), {}, "model.policy: {models}/seq-cls is a LlamaForSequenceClassification"),
    ("label-judge-model-masked-lm", label("judge.kind=reward_model", "judge.function=null", "judge.model={models}/masked-lm",
                                          "placement.judge={pool: main, num_gpus: 1}"), {}, "judge.model: {models}/masked-lm is a BertForMaskedLM"),
    ("label-output-under-file", label("run.output_dir={tmp}/x.txt/run"), {"x.txt": "x"}, "run.output_dir: '{tmp}/x.txt' is a file, so"),
    # --- export ---
    ("export-not-step-n", ["export", "{ckpts}/bad-name/checkpoints/latest", "{tmp}/out"], {}, "checkpoint: '{ckpts}/bad-name/checkpoints/latest' is not named step_N"),
    ("export-no-run-config", ["export", CKPT % "no-config", "{tmp}/out"], {}, "no-config/config.yaml' does not exist"),
    ("export-crafted", ["export", CKPT % "crafted", "{tmp}/out"], {}, "mp_rank_00_model_states.pt: refused to unpickle"),
    ("export-incomplete", ["export", "{ckpts}/incomplete/checkpoints/step_00000002", "{tmp}/out"], {}, "(no COMPLETE file)"),
    ("export-out-not-empty", ["export", CKPT % "no-critic", "{tmp}/out"], {"out/keep.txt": "mine"}, "out_dir: '{tmp}/out' already exists and is not empty; pass --force"),
    ("export-out-is-file", ["export", CKPT % "no-critic", "{tmp}/out"], {"out": "mine"}, "out_dir: '{tmp}/out' is a file, not a directory"),
    ("export-role-absent", ["export", CKPT % "no-critic", "{tmp}/out", "--role", "critic"], {}, "--role: '{ckpts}/no-critic/checkpoints/step_00000001/critic' does not exist"),
    ("export-stage-run", ["export", CKPT % "stage-run", "{tmp}/out"], {}, "stage-run/config.yaml: not a PPO run config"),
    ("export-out-empty-string", ["export", CKPT % "no-critic", ""], {}, "out_dir: empty path"),
    # --- make-tiny-model ---
    ("tiny-negative-hidden", ["make-tiny-model", "{tmp}/m", "--hidden-size", "-8"], {}, "--hidden-size: -8 must be at least 8"),
    ("tiny-zero-layers", ["make-tiny-model", "{tmp}/m", "--layers", "0"], {}, "--layers: 0 must be at least 1"),
    ("tiny-odd-hidden", ["make-tiny-model", "{tmp}/m", "--hidden-size", "10"], {}, "--hidden-size: 10 must be at least 8 and a multiple of 4"),
    ("tiny-enormous", ["make-tiny-model", "{tmp}/m", "--hidden-size", "100000"], {}, "is not a tiny model"),
    ("tiny-out-not-empty", ["make-tiny-model", "{tmp}/m"], {"m/keep.txt": "mine"}, "out_dir: '{tmp}/m' already exists and is not empty; pass --force"),
    ("tiny-out-is-file", ["make-tiny-model", "{tmp}/m"], {"m": "mine"}, "out_dir: '{tmp}/m' is a file, not a directory"),
    ("tiny-parent-is-file", ["make-tiny-model", "{tmp}/x.txt/m"], {"x.txt": "x"}, "out_dir: '{tmp}/x.txt' is a file, so"),
    ("tiny-empty-path", ["make-tiny-model", ""], {}, "out_dir: empty path"),
    # --- the command line ---
    ("cli-unknown-command", ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ("cli-train-without-config", ["train"], {}, "the following arguments are required: config"),
    ("cli-export-bad-role", ["export", "a", "b", "--role", "reward"], {}, "argument --role: invalid choice: 'reward'"),
    ("cli-bench-bad-what", ["bench", "speed", "{tmp}/ppo.yaml"], {}, "invalid choice: 'speed'"),
    ("cli-unknown-flag", ["train", "{tmp}/ppo.yaml", "--fast"], {}, "unrecognized arguments: --fast"),
    ("cli-tiny-layers-not-int", ["make-tiny-model", "{tmp}/m", "--layers", "two"], {}, "argument --layers: invalid int value: 'two'"),
    # --- pipeline, plan, bench ---
    ("pipeline-missing-files", ["pipeline", "{tmp}"], {}, "must hold sft.yaml, rm.yaml, ppo.yaml; missing"),
    ("pipeline-override-without-stage", ["pipeline", P, "run.steps=1"], {}, "pipeline override 'run.steps=1' must look like STAGE:dotted.key=value"),
    ("pipeline-nan-in-a-stage", ["pipeline", P, "sft:train.lr=.nan"], {}, "train.lr: Input should be a finite number"),
    ("plan-nan", ["plan", "{tmp}/ppo.yaml", "ppo.policy_lr=.nan"], {}, "ppo.policy_lr: Input should be a finite number"),
    ("plan-bad-override", ["plan", "{tmp}/ppo.yaml", "ppo.policy_lr=[1"], {}, "the value is not valid YAML"),
    ("bench-run-dir-is-file", ["bench", "step", "{tmp}/ppo.yaml", "--run-dir", "{tmp}/x.txt"], {"x.txt": "x"}, "run.output_dir: '{tmp}/x.txt' is a file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(case, tiny_model, broken, tmp_path, capsys):  # noqa: F811
    _, argv, files, expected = case
    fill = lambda text: (text.replace("{tmp}", str(tmp_path)).replace("{models}", broken["models"])  # noqa: E731
                         .replace("{ckpts}", broken["ckpts"]).replace("{model}", tiny_model))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "the red cat"}\n')
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(demo_config_dict(tiny_model, str(tmp_path / "prompts.jsonl"), str(tmp_path / "run"))))
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = tree(tmp_path, *broken.values(), tiny_model, P)
    try:
        code = main([fill(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert fill(expected) in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err  # one message (argparse adds its usage line)
    assert tree(tmp_path, *broken.values(), tiny_model, P) == before
    assert not Path(broken["ckpts"], "PAYLOAD_RAN").exists()
    assert not Path("runs/pipeline-should-not-exist").exists()


def test_command_table_is_large_enough():
    assert len({c[0] for c in CASES}) >= 60
