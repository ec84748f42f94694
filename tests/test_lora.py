"""LoRA adapters on real DeepSpeed learners in this process (gloo, one rank; no Ray), against transformers and peft
directly: the reference is the policy with its adapter off (equal to a separate frozen reference, before and after
training); an initial adapter is trained from and is the reference; what a sync or a save sends (the adapter
under peft's names, the base with the adapter merged in); SFT, reward-model and DPO learners with adapters;
the roles and passes a LoRA config starts; `plan`'s LoRA arithmetic."""
import pytest
import torch

from rlhf_dist.algorithms.losses import DPOLoss, PairwiseRewardLoss, PolicyLoss, SFTLoss
from rlhf_dist.config import load_config
from rlhf_dist.config.passes import step_passes
from rlhf_dist.data.batch import build_batch
from rlhf_dist.learner import models

from tests.conftest import demo_config_dict

PROMPTS, RESPONSES = [[5, 6, 7], [8, 9], [3, 4, 5, 6], [7]], [[10, 11], [12, 13, 14, 15], [20], [30, 31, 32]]


def rl_config(model, tmp_path, *overrides, lora="{rank: 8, alpha: 16}"):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
    d = demo_config_dict(model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"]["policy"] = {"pool": "main", "num_gpus": 1, "zero_stage": 2}
    d["ppo"].update(mini_batch_size=4, micro_batch_size=2)
    return load_config(None, [f"model.lora={lora}", *overrides], base=d)


def started(worker_cls, spec):
    w = worker_cls(spec, 0, 1)
    w.setup(*w.master_endpoint())
    return w


def logprobs(model, batch):
    with torch.no_grad():
        return models.token_logprobs(models.response_logits(model, batch), batch["input_ids"][:, -batch["mask"].shape[1]:], 1.0)


def train_steps(worker, batch, n=3):
    loss = PolicyLoss(name="ppo", clip_eps=0.2, aggregation="token_mean")
    g = torch.Generator().manual_seed(0)
    for step in range(n):
        b = {**batch, "old_logprobs": worker.infer(batch)["logprobs"], "advantages": torch.randn(batch["mask"].shape, generator=g) * batch["mask"]}
        worker.train(b, loss, seed=step)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A LoRA policy rank trained 3 steps, its final save, and a separate frozen reference's log-probs."""
    from rlhf_dist.learner.frozen import ReferenceWorker
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.trainers.rl_roles import learner_spec, reference_spec

    tmp = tmp_path_factory.mktemp("lora")
    cfg = rl_config(tiny_model, tmp)
    batch = build_batch(PROMPTS, RESPONSES, pad_id=2)
    ref = ReferenceWorker(reference_spec(cfg), 0, 1)
    ref.setup()
    worker = started(PolicyWorker, learner_spec(cfg, "policy"))
    before = {"reference": worker.infer_reference(batch)["logprobs"], "policy": worker.infer(batch)["logprobs"]}
    base = {n: p.detach().clone() for n, p in worker.engine.module.named_parameters() if not p.requires_grad}
    train_steps(worker, batch)
    worker.save_hf(str(tmp / "final"), 1.0)
    return {"worker": worker, "batch": batch, "frozen": ref.infer(batch)["logprobs"], "before": before, "base": base,
            "final": tmp / "final", "cfg": cfg, "tmp": tmp}


def test_the_reference_is_the_policy_with_its_adapter_off(trained):
    w, batch, frozen = trained["worker"], trained["batch"], trained["frozen"]
    mask = batch["mask"].bool()
    # A fresh adapter (B = 0) leaves the model as it was; after training only the adapter has moved.
    assert torch.equal(trained["before"]["reference"], frozen) and torch.equal(trained["before"]["policy"], frozen)
    policy, reference = w.infer(batch)["logprobs"], w.infer_reference(batch)["logprobs"]
    assert (policy - frozen).abs()[mask].max() > 1e-2  # the policy trained
    assert torch.equal(reference, frozen)  # the separate frozen reference's log-probs, exactly
    assert all(torch.equal(p, trained["base"][n]) for n, p in w.engine.module.named_parameters() if not p.requires_grad)
    assert all(p.requires_grad for n, p in w.engine.module.named_parameters() if ".lora_" in n)
    assert w.infer(batch)["logprobs"].equal(policy)  # the reference pass left the adapter on


def test_the_payloads_a_sync_sends(trained, tiny_model):
    """Adapter: the trained tensors under peft's saved names, in the engines' dtype; merged: the base model's own
    names, whose weights give transformers the policy's log-probs."""
    from peft import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from rlhf_dist.learner import lora

    w, batch = trained["worker"], trained["batch"]
    adapter = w.sync_plan(1.0, "adapter")
    names = [n for b in adapter for n in b.names]
    assert names == list(get_peft_model_state_dict(w.engine.module))
    assert all(b.dtype == "torch.float32" for b in adapter)
    assert sum(b.numel for b in adapter) == lora.trainable(w.engine.module) == 2 * 8 * (4 * (64 + 64) + 3 * (64 + 256))
    merged = [n for b in w.sync_plan(1.0, "merged") for n in b.names]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert merged == [n for n, _ in hf.named_parameters()]
    hf.load_state_dict(w._gather_state("merged", 1.0))
    assert torch.allclose(logprobs(hf, batch), w.infer(batch)["logprobs"], atol=1e-5)


def test_the_final_save_is_merged_and_its_adapter_loads_in_peft(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    w, batch, final = trained["worker"], trained["batch"], trained["final"]
    policy = w.infer(batch)["logprobs"]
    assert torch.allclose(logprobs(AutoModelForCausalLM.from_pretrained(final), batch), policy, atol=1e-5)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(final / "adapter"))
    assert torch.allclose(logprobs(peft_model, batch), policy, atol=1e-6)


def test_an_initial_adapter_is_trained_from_and_is_the_reference(trained, tiny_model):
    """model.lora.path: the policy starts as base + that adapter, and its reference stays there while it trains."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.preflight import check_lora
    from rlhf_dist.trainers.rl_roles import learner_spec

    path = trained["final"] / "adapter"
    cfg = rl_config(tiny_model, trained["tmp"], lora=f"{{rank: 8, alpha: 16, path: '{path}'}}")
    check_lora("model.lora", cfg.model.lora, tiny_model)  # the directory's config matches
    batch = build_batch(PROMPTS, RESPONSES, pad_id=2)
    want = logprobs(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(path)), batch)
    w = started(PolicyWorker, learner_spec(cfg, "policy"))
    assert torch.allclose(w.infer(batch)["logprobs"], want, atol=1e-6)
    train_steps(w, batch, n=2)
    assert (w.infer(batch)["logprobs"] - want).abs().max() > 1e-3
    assert torch.allclose(w.infer_reference(batch)["logprobs"], want, atol=1e-6)
    # Checkpoints keep only what trains: the frozen base and the reference's adapter come from their files again.
    w.save_checkpoint(str(trained["tmp"] / "ckpt"))
    from rlhf_dist.commands.export import consolidated_state_dict

    saved = consolidated_state_dict(trained["tmp"] / "ckpt")
    assert sorted(saved) == sorted(n for n, p in w.engine.module.named_parameters() if p.requires_grad)


def stage_config(kind, model, tmp_path, **lora):
    from rlhf_dist.config.stages import load_stage_config

    base = {"model": {"path": model, "lora": {"rank": 8, "alpha": 16, **lora}}, "data": {"train": str(tmp_path / "d.jsonl")},
            "placement": {"pools": {"main": {"gpus_per_node": 1}}, "learner": {"pool": "main", "num_gpus": 1, "zero_stage": 2}},
            "train": {"batch_size": 4, "micro_batch_size": 2, "lr": 1e-2}}
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "response": "b", "chosen": "b", "rejected": "c"}\n')
    return load_stage_config(kind, None, base=base)


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo"])
def test_stage_learners_train_their_adapter_only(kind, tiny_model, tmp_path):
    """SFT, RM and DPO learners with adapters: the loss falls on a fixed batch, the base stays frozen, and the reward
    model's score head trains whole beside its adapter."""
    from rlhf_dist.trainers.stages import learner_role

    role = learner_role(kind, stage_config(kind, tiny_model, tmp_path), total_steps=10)
    w = started(role.worker, role.spec)
    frozen = {n: p.detach().clone() for n, p in w.engine.module.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (4, 2, 10), generator=g) if kind != "sft" else torch.randint(3, 300, (4, 10), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask": torch.ones(ids.shape[:-1] + (4,))}
    if kind == "dpo":
        batch["ref_logps"] = w.reference_logps(batch)
    loss_fn = {"sft": SFTLoss(), "rm": PairwiseRewardLoss(), "dpo": DPOLoss(0.1, "sigmoid")}[kind]
    losses = [w.train(batch, loss_fn, seed=s)[f"{kind}/loss"] for s in range(4)]
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in w.engine.module.named_parameters() if not p.requires_grad)
    trained = {n for n, p in w.engine.module.named_parameters() if p.requires_grad}
    heads = {n for n in trained if ".lora_" not in n}
    assert heads == ({"base_model.model.score.weight"} if kind == "rm" else set())


def test_lora_configs_start_no_reference_and_pass_it_on_the_policy(tiny_model, tmp_path):
    from rlhf_dist.trainers.rl_roles import role_specs

    cfg = rl_config(tiny_model, tmp_path, "ppo.kl_coef=0.05")
    assert [s.name for s in role_specs(cfg)] == ["policy", "critic", "rollout"]
    passes = step_passes(cfg)
    assert passes.reference and passes.reference_on_policy and passes.kl_measured
    critic = next(s for s in role_specs(load_config(None, ["model.critic_lora={rank: 4}"], base=cfg.model_dump())) if s.name == "critic")
    assert critic.spec.lora.rank == 4 and critic.spec.lora.heads == ("score",)
    assert next(s for s in role_specs(cfg) if s.name == "critic").spec.lora is None  # the critic trains in full
    engine = next(s for s in role_specs(cfg) if s.name == "rollout").spec
    assert engine.llm["enable_lora"] and engine.llm["max_lora_rank"] == 8 and engine.llm["max_loras"] == 1
    assert engine.lora == {"rank": 8, "alpha": 16.0, "target_modules": list(cfg.model.lora.target_modules), "slots": 1}
    # A single on-policy update takes old log-probs from its own forward, unless adapter dropout makes it differ.
    lean = ["ppo.log_kl=false", "ppo.mini_batch_size=16", "ppo.micro_batch_size=4", "placement.critic=null",
            "ppo.advantage_estimator=grpo"]
    assert step_passes(rl_config(tiny_model, tmp_path, *lean)).old_from == "first_forward"
    assert step_passes(rl_config(tiny_model, tmp_path, *lean, lora="{dropout: 0.1}")).old_from == "infer"


def test_plan_counts_the_adapter_and_drops_the_reference():
    from rlhf_dist.commands.plan import GiB, format_plan, plan

    lora = load_config("configs/qwen7b_lora_8gpu.yaml")
    full = load_config("configs/qwen7b_8gpu.yaml", ["placement.policy.zero_stage=2", "placement.critic.zero_stage=2"])
    got, base = plan(lora), plan(full)
    # Qwen2.5-7B: 28 layers; q 3584->3584, k and v 3584->512, o 3584->3584, gate and up 3584->18944, down 18944->3584.
    per_layer = 32 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert got["roles"]["policy"]["trainable_params"] == 28 * per_layer
    T, P = 28 * per_layer, got["model"]["params"]
    pol = got["roles"]["policy"]["bytes"]
    assert pol["optimizer"] == pytest.approx(12 * T / 4 / GiB) and pol["grads"] == pytest.approx(2 * T / 4 / GiB)
    assert pol["params"] == pytest.approx(2 * (P + T) / GiB)
    assert base["roles"]["policy"]["bytes"]["optimizer"] == pytest.approx(12 * P / 4 / GiB)
    assert "reference" not in got["roles"] and "reference" in base["roles"]
    assert got["lora"]["reference_dropped_gib"] == pytest.approx(2 * P / GiB)
    assert got["roles"]["critic"]["trainable_params"] == T + 3584 + 1  # the value head trains whole
    assert got["fits"] and got["pools"]["learn"]["headroom"] > 0.5
    assert "LoRA reference: the policy with its adapter off, no reference role" in format_plan(got)
    seventy = plan(load_config("configs/llama70b_lora_2node.yaml"))
    assert seventy["fits"] and all(pl["headroom"] >= 0.1 for pl in seventy["pools"].values())


def test_zero_stages_0_to_2_train_the_adapter_alike(tiny_model, tmp_path):
    """The same adapter updates under ZeRO 0, 1 and 2 (ZeRO-3 runs in tests/test_lora_integration.py, in its own
    processes: transformers keeps one ZeRO-3 setting per process)."""
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.trainers.rl_roles import learner_spec

    batch = build_batch(PROMPTS, RESPONSES, pad_id=2)
    after = []
    for stage in (0, 1, 2):
        w = started(PolicyWorker, learner_spec(rl_config(tiny_model, tmp_path, f"placement.policy.zero_stage={stage}"), "policy"))
        train_steps(w, batch, n=2)
        after.append(w.infer(batch)["logprobs"])
    assert (after[0] - logprobs_of_base(tiny_model, batch)).abs().max() > 1e-3
    assert all(torch.allclose(a, after[0], atol=1e-5) for a in after[1:])


def logprobs_of_base(model, batch):
    from transformers import AutoModelForCausalLM

    return logprobs(AutoModelForCausalLM.from_pretrained(model), batch)


def test_bench_sync_summary_compares_adapter_and_full():
    from rlhf_dist.commands.bench import adapter_against_full

    rows = [{"path": f"rlhf_dist sync ({p})", "MB": mb, "seconds": s} for p, mb, s in
            [("adapter", 6.0, 0.02), ("adapter", 6.0, 0.01), ("adapter", 6.0, 0.03), ("merged", 136.0, 0.7), ("merged", 136.0, 0.5)]]
    got = adapter_against_full(rows)
    assert got["adapter"] == {"MB": 6.0, "seconds": 0.02} and got["merged"] == {"MB": 136.0, "seconds": 0.6}
    assert got["bytes_ratio"] == pytest.approx(136 / 6) and got["seconds_ratio"] == pytest.approx(30)
