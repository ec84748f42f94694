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


class LINK(str):
    """A file entry that is a symbolic link to another path under {tmp}."""


RUN = {"r/metrics.jsonl": '{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": 0.7}\n'}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 128}
HUGE = json.dumps({"prompt": "the sun " * 100000, "response": " is hot"})
RM = stage("rm", "data.train={tmp}/d.jsonl", "data.margin_key=m")
CKPT = "{ckpts}/%s/checkpoints/step_00000001"
EVAL = ["eval", "{tmp}/ppo.yaml", "eval={prompts: '{tmp}/e.jsonl'}"]
CANDS = "configs/collect_cpu/candidates.yaml"


def serve(*extra: str) -> list[str]:
    return ["collect", "serve", "{tmp}/c.jsonl", "--store", "{tmp}/v.sqlite", *extra]


def candidates(*extra: str) -> list[str]:
    return ["collect", "candidates", CANDS, "model.policy={model}", "run.output_dir={tmp}/run", *extra]


GOOD_ITEM = '{"id": "a", "prompt": "p", "responses": ["x", "y"]}\n'

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
    ("sft-micro-batch-tokens-below-a-sample", stage("sft", "train.micro_batch_tokens=16"), {},
     "train.micro_batch_tokens: 16 is smaller than the longest sample (32 tokens: data.max_length)"),
    ("dpo-micro-batch-tokens-below-a-pair", stage("dpo", "train.micro_batch_tokens=40", "data.packing=true"), {},
     "train.micro_batch_tokens: 40 is smaller than the longest sample (64 tokens: a pair, 2 x data.max_length=32)"),
    ("plan-micro-batch-tokens-below-a-sequence", ["plan", "{tmp}/ppo.yaml", "ppo.micro_batch_tokens=12"], {},
     "ppo.micro_batch_tokens: 12 is smaller than the longest sequence (44 tokens"),
    ("bench-learner-micro-batch-tokens-below", ["bench", "learner", "{tmp}/ppo.yaml", "ppo.infer_micro_batch_tokens=2"], {},
     "ppo.infer_micro_batch_tokens: 2 is smaller than the longest sequence"),
    ("dpo-reference-masked-lm", stage("dpo", "model.reference={models}/masked-lm"), {}, "model.reference: {models}/masked-lm is a BertForMaskedLM"),
    ("dpo-resume-crafted", stage("dpo", "resume=" + CKPT % "crafted"), {}, "refused to unpickle (it calls io.open"),
    ("dpo-resume-no-config", stage("dpo", "resume=" + CKPT % "no-config"), {}, "no-config/config.yaml' does not exist"),
    ("sft-lora-target", stage("sft", "model.lora={target_modules: [q_proj, nope]}"), {}, "model.lora.target_modules: ['nope'] name no linear layer of"),
    ("dpo-lora-rank", stage("dpo", "model.lora={rank: 0}"), {}, "model.lora.rank: Input should be greater than or equal to 1"),
    ("rm-lora-path", stage("rm", "model.lora={path: '{tmp}/none'}"), {}, "model.lora.path: '{tmp}/none/adapter_config.json' cannot be read"),
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
    ("export-adapter-without-lora", ["export", CKPT % "no-critic", "{tmp}/out", "--lora", "adapter"], {},
     "--lora: adapter, but this run's policy trained all its weights (no model.lora)"),
    # --- eval ---
    ("eval-no-section", ["eval", "{tmp}/ppo.yaml"], {}, "eval: the config has no eval section"),
    ("eval-prompts-missing", EVAL + ["eval.prompts={tmp}/nope.jsonl"], {}, "eval.prompts: '{tmp}/nope.jsonl' does not exist"),
    ("eval-prompts-malformed", EVAL, {"e.jsonl": '{"prompt": "a"}\n{nope\n'}, "e.jsonl:2: malformed JSON"),
    ("eval-prompts-not-utf8", EVAL, {"e.jsonl": b'{"prompt": "caf\xe9"}\n'}, "e.jsonl:1: not UTF-8 (invalid continuation byte at byte 15)\n"),
    ("eval-prompts-lone-surrogate", EVAL, {"e.jsonl": '{"prompt": "\\ud800"}\n'}, "e.jsonl:1: holds text that is not valid Unicode"),
    ("eval-prompt-key-absent", EVAL + ["eval.prompt_key=question"], {"e.jsonl": '{"prompt": "a"}\n'}, "e.jsonl:1: missing field 'question' (eval.prompt_key)\n"),
    ("eval-k-beyond-samples", EVAL + ["eval.n_samples=2", "eval.k=[1, 4]"], {}, "eval.k: 4 must be between 1 and eval.n_samples (2)"),
    ("eval-nothing-to-run", EVAL + ["eval.greedy=false", "eval.n_samples=0"], {}, "eval: set greedy: true and/or n_samples > 0"),
    ("eval-unknown-pass-function", EVAL + ["eval.pass_function=nope"], {"e.jsonl": '{"prompt": "a"}\n'},
     "eval.pass_function: 'nope' is not one of reward.functions"),
    ("eval-policy-masked-lm", EVAL + ["model.policy={models}/masked-lm"], {"e.jsonl": '{"prompt": "a"}\n'}, "model.policy: {models}/masked-lm is a BertForMaskedLM"),
    ("eval-policy-missing", EVAL + ["model.policy={tmp}/gone", "model.make_tiny=false"], {"e.jsonl": '{"prompt": "a"}\n'}, "model.policy: '{tmp}/gone' does not exist"),
    ("eval-output-under-file", EVAL + ["run.output_dir={tmp}/x.txt/run"], {"x.txt": "x"}, "run.output_dir: '{tmp}/x.txt' is a file, so"),
    ("eval-nan-temperature", EVAL + ["rollout.temperature=.nan"], {}, "rollout.temperature: Input should be a finite number"),
    # --- make-tiny-model ---
    ("tiny-negative-hidden", ["make-tiny-model", "{tmp}/m", "--hidden-size", "-8"], {}, "--hidden-size: -8 must be at least 8"),
    ("tiny-zero-layers", ["make-tiny-model", "{tmp}/m", "--layers", "0"], {}, "--layers: 0 must be at least 1"),
    ("tiny-odd-hidden", ["make-tiny-model", "{tmp}/m", "--hidden-size", "10"], {}, "--hidden-size: 10 must be at least 8 and a multiple of 4"),
    ("tiny-enormous", ["make-tiny-model", "{tmp}/m", "--hidden-size", "100000"], {}, "is not a tiny model"),
    ("tiny-out-not-empty", ["make-tiny-model", "{tmp}/m"], {"m/keep.txt": "mine"}, "out_dir: '{tmp}/m' already exists and is not empty; pass --force"),
    ("tiny-out-is-file", ["make-tiny-model", "{tmp}/m"], {"m": "mine"}, "out_dir: '{tmp}/m' is a file, not a directory"),
    ("tiny-parent-is-file", ["make-tiny-model", "{tmp}/x.txt/m"], {"x.txt": "x"}, "out_dir: '{tmp}/x.txt' is a file, so"),
    ("tiny-empty-path", ["make-tiny-model", ""], {}, "out_dir: empty path"),
    ("tiny-init-std-zero", ["make-tiny-model", "{tmp}/m", "--init-std", "0"], {}, "--init-std: 0.0 must be above 0 and at most 1"),
    ("tiny-init-std-nan", ["make-tiny-model", "{tmp}/m", "--init-std", "nan"], {}, "--init-std: nan must be above 0 and at most 1"),
    # --- the command line ---
    ("cli-unknown-command", ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ("cli-train-without-config", ["train"], {}, "the following arguments are required: config"),
    ("cli-export-bad-role", ["export", "a", "b", "--role", "reward"], {}, "argument --role: invalid choice: 'reward'"),
    ("cli-export-bad-lora", ["export", "a", "b", "--lora", "delta"], {}, "argument --lora: invalid choice: 'delta'"),
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
    # --- round three: writes that would replace a user's file or follow a link ---
    ("bench-out-exists", ["bench", "rollout", "{tmp}/ppo.yaml", "--out", "{tmp}/b.json"], {"b.json": "mine"},
     "bench --out: '{tmp}/b.json' already exists (a file); pass --force"),
    ("bench-out-is-link", ["bench", "sync", "{tmp}/ppo.yaml", "--out", "{tmp}/b.json"], {"mine.json": "mine", "b.json": LINK("mine.json")},
     "bench --out: '{tmp}/b.json' already exists (a symbolic link)"),
    ("bench-out-dangling-link", ["bench", "step", "{tmp}/ppo.yaml", "--out", "{tmp}/b.json"], {"b.json": LINK("gone.json")},
     "already exists (a symbolic link)"),
    ("report-out-exists", ["report", "{tmp}/r", "--out", "{tmp}/mine.png"], {**RUN, "mine.png": "mine"},
     "report --out: '{tmp}/mine.png' already exists (a file); pass --force"),
    ("report-out-is-link", ["report", "{tmp}/r", "--out", "{tmp}/r.png"], {**RUN, "mine.png": "mine", "r.png": LINK("mine.png")},
     "report --out: '{tmp}/r.png' already exists (a symbolic link)"),
    ("report-md-beside-exists", ["report", "{tmp}/r", "--out", "{tmp}/new.png"], {**RUN, "new.md": "my notes"},
     "report --out (the summary beside it): '{tmp}/new.md' already exists"),
    # --- round three: commands besides train check what they read ---
    ("report-not-a-directory", ["report", "{tmp}/x.txt"], {"x.txt": "x"}, "report: '{tmp}/x.txt' is not a directory"),
    ("report-missing-run", ["report", "{tmp}/nope"], {}, "report: '{tmp}/nope/metrics.jsonl' does not exist"),
    ("report-row-without-step", ["report", "{tmp}/r"], {"r/metrics.jsonl": '{"step": 1}\n{"reward/mean": 0.5}\n'},
     "r/metrics.jsonl:2: a row must be a JSON object with an integer 'step'"),
    ("report-bad-line-mid-file", ["report", "{tmp}/r"], {"r/metrics.jsonl": '{"step": 1}\n{"step": 2, "re\n{"step": 3}\n'},
     "r/metrics.jsonl:2: not valid JSON"),
    ("report-metrics-not-utf8", ["report", "{tmp}/r"], {"r/metrics.jsonl": b'{"step": 1, "x": "\xff"}\n'}, "r/metrics.jsonl: not UTF-8"),
    ("report-unknown-format", ["report", "{tmp}/r", "--out", "{tmp}/r.gif"], RUN, "the figure is written as .png, .svg, .pdf"),
    ("bench-zero-prompts", ["bench", "rollout", "{tmp}/ppo.yaml", "--prompts", "0"], {}, "argument --prompts: 0 must be at least 1"),
    ("bench-negative-prompt-len", ["bench", "rollout", "{tmp}/ppo.yaml", "--prompt-len", "-3"], {}, "argument --prompt-len: -3 must be at least 1"),
    ("bench-prompt-longer-than-context", ["bench", "rollout", "{tmp}/ppo.yaml", "--prompt-len", "200"], {},
     "bench --prompt-len: 200 is more than data.max_prompt_tokens="),
    ("bench-nan-tool-latency", ["bench", "rollout", "{tmp}/ppo.yaml", "--tool-latency-s", "nan"], {},
     "argument --tool-latency-s: nan must be a number of seconds from 0 to 600"),
    ("bench-tool-latency-words", ["bench", "rollout", "{tmp}/ppo.yaml", "--tool-latency-s", "slow"], {},
     "argument --tool-latency-s: invalid number: 'slow'"),
    ("bench-zero-steps", ["bench", "step", "{tmp}/ppo.yaml", "--steps", "0"], {}, "argument --steps: 0 must be at least 1"),
    ("bench-nan-bucket", ["bench", "sync", "{tmp}/ppo.yaml", "--bucket-mb", "1,nan"], {}, "bench --bucket-mb: '1,nan': every size must be"),
    ("bench-bucket-words", ["bench", "sync", "{tmp}/ppo.yaml", "--bucket-mb", "big"], {}, "bench --bucket-mb: 'big' is not a comma-separated"),
    ("plan-zero-heads", ["plan", "{tmp}/ppo.yaml", "model.policy={tmp}/m"], {"m/config.json": json.dumps({**LLAMA, "num_attention_heads": 0})},
     "{tmp}/m/config.json"),
    ("plan-negative-layers", ["plan", "{tmp}/ppo.yaml", "model.policy={tmp}/m"], {"m/config.json": json.dumps({**LLAMA, "num_hidden_layers": -2})},
     "{tmp}/m/config.json: num_hidden_layers must be a positive integer (got -2)"),
    ("plan-kv-heads-not-divisor", ["plan", "{tmp}/ppo.yaml", "model.policy={tmp}/m"], {"m/config.json": json.dumps({**LLAMA, "num_key_value_heads": 3})},
     "num_key_value_heads=3 must be a positive divisor of num_attention_heads=4"),
    ("plan-config-not-json", ["plan", "{tmp}/ppo.yaml", "model.policy={tmp}/m"], {"m/config.json": "{"}, "cannot be read as a model config"),
    ("export-hub-id-offline", ["export", CKPT % "hub-id", "{tmp}/out"], {}, "is not a local directory and cannot be loaded as a hub model id"),
    # --- round three: values valid alone, wrong together, or refused only late ---
    ("warmup-longer-than-run", ["plan", "{tmp}/ppo.yaml", "ppo.lr_schedule.warmup_steps=50", "run.steps=10"], {},
     "ppo.lr_schedule.warmup_steps: 50 is longer than the schedule (run.steps=10)"),
    ("warmup-longer-than-schedule", ["plan", "{tmp}/ppo.yaml", "ppo.lr_schedule={warmup_steps: 8, total_steps: 4}"], {},
     "(ppo.lr_schedule.total_steps=4)"),
    ("staleness-beyond-run", ["plan", "{tmp}/ppo.yaml", "rollout.max_staleness=5", "run.steps=5"], {},
     "rollout.max_staleness: 5 is not less than run.steps (5)"),
    ("stop-empty-string", ["plan", "{tmp}/ppo.yaml", "rollout.stop=['']"], {}, "rollout.stop.0: String should have at least 1 character"),
    ("stop-token-negative", ["plan", "{tmp}/ppo.yaml", "rollout.stop_token_ids=[-1]"], {}, "rollout.stop_token_ids.0: Input should be greater than or equal to 0"),
    ("stop-token-outside-vocab", ["train", "{tmp}/ppo.yaml", "rollout.stop_token_ids=[2, 99999]"], {},
     "rollout.stop_token_ids: [99999] are outside the policy's vocabulary"),
    ("timeout-overflows", ["plan", "{tmp}/ppo.yaml", "timeouts.call_s=1e300"], {}, "timeouts.call_s: Input should be less than or equal to 10000000"),
    ("reward-timeout-overflows", ["plan", "{tmp}/ppo.yaml", "reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', timeout_s: 1e12}]"], {},
     "reward.functions.0.timeout_s: Input should be less than or equal to 10000000"),
    ("cores-that-do-not-exist", ["plan", "{tmp}/ppo.yaml", "cluster.cpu_cores={main: '0,4096'}"], {},
     "cluster.cpu_cores.main: core(s) [4096] do not exist here"),
    ("cores-not-a-list", ["plan", "{tmp}/ppo.yaml", "cluster.cpu_cores={main: 'first'}"], {}, "cluster.cpu_cores.main: 'first' is not a list of cores"),
    ("cores-huge-range", ["plan", "{tmp}/ppo.yaml", "cluster.cpu_cores={main: '0-999999999999'}"], {}, "is not a list of cores"),
    ("more-nodes-than-a-local-cluster", ["train", "{tmp}/ppo.yaml", "placement.pools.main.nodes=2"], {},
     "placement.pools.main.nodes: 2 nodes, but without cluster.address the job starts a local Ray cluster of one node"),
    ("eval-more-nodes-than-local", EVAL + ["placement.pools.main.nodes=3"], {"e.jsonl": '{"prompt": "a"}\n'},
     "placement.pools.main.nodes: 3 nodes"),
    ("wandb-without-login", ["train", "{tmp}/ppo.yaml", "run.loggers=[wandb]"], {}, "run.loggers: 'wandb' has no login here"),
    ("train-bad-eval-prompts", ["train", "{tmp}/ppo.yaml", "eval.prompts={tmp}/e.jsonl", "run.output_dir={tmp}/run"], {"e.jsonl": "{nope\n"},
     "e.jsonl:1: malformed JSON"),
    # --- round three: malformed text in data files ---
    ("sft-nested-too-deep", stage("sft", "data.train={tmp}/d.jsonl"), {"d.jsonl": '{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n"},
     "d.jsonl:1: malformed JSON: nested too deeply"),
    ("sft-lone-surrogate", stage("sft", "data.train={tmp}/d.jsonl"), {"d.jsonl": '{"prompt": "a\\ud800b", "response": "c"}\n'},
     "d.jsonl:1: holds text that is not valid Unicode"),
    ("sft-unknown-role", stage("sft", "data.train={tmp}/d.jsonl", "data.messages_key=messages"),
     {"d.jsonl": json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"},
     "message 0 of 'messages' has role 'robot'; roles are system, user, assistant, tool"),
    # --- collect ---
    ("collect-serve-candidates-missing", serve(), {}, "candidates: '{tmp}/c.jsonl' does not exist"),
    ("collect-serve-malformed-line", serve(), {"c.jsonl": GOOD_ITEM + '{"id": "b", "prompt": \n'}, "c.jsonl:2: malformed JSON"),
    ("collect-serve-one-response", serve(), {"c.jsonl": '{"prompt": "p", "responses": ["x"]}\n'},
     "c.jsonl:1: field 'responses' holds 1 responses; people compare 2 to 8"),
    ("collect-serve-nine-responses", serve(), {"c.jsonl": json.dumps({"prompt": "p", "responses": ["x"] * 9}) + "\n"},
     "holds 9 responses"),
    ("collect-serve-response-not-text", serve(), {"c.jsonl": '{"prompt": "p", "responses": ["x", {"a": 1}]}\n'},
     "c.jsonl:1: response 1 of 'responses' is not a string"),
    ("collect-serve-duplicate-id", serve(), {"c.jsonl": GOOD_ITEM * 2}, "c.jsonl:2: id 'a' was already given at"),
    ("collect-serve-empty-file", serve(), {"c.jsonl": ""}, "holds no items"),
    ("collect-serve-not-jsonl", ["collect", "serve", "{tmp}/c.csv"], {"c.csv": "a,b\n"}, "is neither .jsonl nor .parquet"),
    ("collect-serve-bad-annotator", serve("--annotator", "a b"), {"c.jsonl": GOOD_ITEM}, "--annotator: 'a b' must be 1-40 letters"),
    ("collect-serve-annotator-twice", serve("--annotator", "x", "--annotator", "x"), {"c.jsonl": GOOD_ITEM}, "--annotator: a name is given twice"),
    ("collect-serve-host-name", serve("--host", "example.com"), {"c.jsonl": GOOD_ITEM}, "--host: 'example.com' is not an IP address"),
    ("collect-serve-port-range", serve("--port", "70000"), {"c.jsonl": GOOD_ITEM}, "--port: Input should be less than or equal to 65535"),
    ("collect-serve-overlap-zero", serve("--overlap", "0"), {"c.jsonl": GOOD_ITEM}, "--overlap: Input should be greater than or equal to 1"),
    ("collect-serve-store-is-directory", ["collect", "serve", "{tmp}/c.jsonl", "--store", "{tmp}"], {"c.jsonl": GOOD_ITEM},
     "--store: '{tmp}' is a directory, not a file"),
    ("collect-serve-store-not-sqlite", serve(), {"c.jsonl": GOOD_ITEM, "v.sqlite": "my notes\n" * 100}, "is not a vote store"),
    ("collect-serve-store-is-link", serve(), {"c.jsonl": GOOD_ITEM, "mine": "x", "v.sqlite": LINK("mine")}, "--store: '{tmp}/v.sqlite' is a symbolic link"),
    ("collect-export-store-missing", ["collect", "export", "{tmp}/nope.sqlite", "{tmp}/p.jsonl"], {}, "STORE: '{tmp}/nope.sqlite' does not exist"),
    ("collect-export-not-a-store", ["collect", "export", "{tmp}/v.sqlite", "{tmp}/p.jsonl"], {"v.sqlite": "my notes\n" * 100}, "is not a vote store"),
    ("collect-export-out-exists", ["collect", "export", "{tmp}/v.sqlite", "{tmp}/p.jsonl"], {"p.jsonl": "mine"},
     "OUT: '{tmp}/p.jsonl' already exists (a file); pass --force"),
    ("collect-candidates-one-sample", candidates("rollout.n_samples_per_prompt=1"), {}, "people compare 2 to 8 responses of a prompt, not 1"),
    ("collect-candidates-nine-samples", candidates("rollout.n_samples_per_prompt=9"), {}, "not 9"),
    ("collect-candidates-policy-seq-cls", candidates("model.policy={models}/seq-cls"), {}, "model.policy: {models}/seq-cls is a LlamaForSequenceClassification"),
    ("collect-candidates-checkpoint-crafted", candidates("model.policy=" + CKPT % "crafted"), {}, "refused to unpickle"),
    ("collect-candidates-prompts-missing", candidates("data.prompts={tmp}/nope.jsonl"), {}, "data.prompts: '{tmp}/nope.jsonl' does not exist"),
    ("collect-start-missing-files", ["collect", "start", "{tmp}"], {}, "must hold sft.yaml, candidates.yaml, rm.yaml, ppo.yaml; missing"),
    ("collect-start-override-without-step", ["collect", "start", "configs/collect_cpu", "run.steps=1"], {},
     "collect override 'run.steps=1' must look like STEP:dotted.key=value"),
    ("collect-start-bad-port", ["collect", "start", "configs/collect_cpu", "--port", "-1"], {}, "Input should be greater than or equal to 0"),
    ("collect-train-not-a-session", ["collect", "train", "{tmp}"], {}, "collect train: '{tmp}/session.json' does not exist"),
    ("cli-collect-without-verb", ["collect"], {}, "the following arguments are required: verb"),
    ("bench-collect-zero-annotators", ["bench", "collect", "--annotators", "0"], {}, "argument --annotators: 0 must be at least 1"),
    ("bench-rollout-without-config", ["bench", "rollout"], {}, "bench rollout: needs CONFIG"),
    ("prompts-lone-surrogate", ["train", "{tmp}/ppo.yaml", "data.prompts={tmp}/p.jsonl"], {"p.jsonl": '{"prompt": "\\udfff"}\n'},
     "p.jsonl:1: holds text that is not valid Unicode"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(case, tiny_model, broken, tmp_path, capsys, monkeypatch):  # noqa: F811
    _, argv, files, expected = case
    fill = lambda text: (text.replace("{tmp}", str(tmp_path)).replace("{models}", broken["models"])  # noqa: E731
                         .replace("{ckpts}", broken["ckpts"]).replace("{model}", tiny_model))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "the red cat"}\n')
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(demo_config_dict(tiny_model, str(tmp_path / "prompts.jsonl"), str(tmp_path / "run"))))
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, LINK):
            (tmp_path / name).symlink_to(tmp_path / content)
        else:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    if "wandb" in case[0]:
        for key in ("WANDB_API_KEY", "WANDB_MODE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc holding a W&B key
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
    assert len({c[0] for c in CASES}) >= 100
