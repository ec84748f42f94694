"""No unneeded work: which roles start and which passes run, decided from the config; the single on-policy update
that takes its old log-probs from its own first forward gives the loss and gradient of the recomputing path."""
import pytest
import torch

from rlhf_dist.algorithms.losses import LOGPROB_PROBE, PolicyLoss
from rlhf_dist.config import derive, load_config
from rlhf_dist.config.passes import step_passes
from rlhf_dist.trainers.passes_run import reduce_ranks
from rlhf_dist.trainers.rl_roles import role_specs

from tests.conftest import demo_config_dict


def config(tmp_path, *overrides):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    d = demo_config_dict(str(tmp_path / "m"), str(prompts), str(tmp_path / "run"))
    d["ppo"].pop("log_kl")  # the default: no KL metric asked for
    return load_config(None, list(overrides), base=d)


# (overrides, reference started, policy recomputes old log-probs, their source); the base batch is 8 x 2 = 16
# samples, mini-batch 8, so a single update needs ppo.mini_batch_size=16.
CASES = [
    ([], False, True, "infer"),  # two optimizer steps: old log-probs must be recomputed
    (["ppo.mini_batch_size=16"], False, False, "first_forward"),
    (["ppo.mini_batch_size=16", "ppo.epochs=2"], False, True, "infer"),
    (["ppo.mini_batch_size=16", "ppo.kl_coef=0.1"], True, True, "infer"),  # KL in the rewards: before the update
    (["ppo.mini_batch_size=16", "ppo.kl_coef=0.1", "ppo.kl_target=0.2"], True, True, "infer"),
    (["ppo.mini_batch_size=16", "ppo.kl_loss_coef=0.1"], True, False, "first_forward"),
    (["ppo.mini_batch_size=16", "ppo.log_kl=true"], True, True, "infer"),
    (["ppo.old_logprobs=engine"], False, False, "engine"),
    (["ppo.old_logprobs=engine", "ppo.kl_coef=0.1"], True, False, "engine"),
    # An off-policy correction weighs the learner's log-probs against the engine's: they are computed first.
    (["ppo.mini_batch_size=16", "ppo.is_correction=token_tis"], False, True, "infer"),
]


@pytest.mark.parametrize("overrides,reference,policy_infer,old_from", CASES)
def test_passes_and_roles_follow_the_config(tmp_path, overrides, reference, policy_infer, old_from):
    cfg = config(tmp_path, *overrides)
    passes = step_passes(cfg)
    assert (passes.reference, passes.policy_infer, passes.old_from) == (reference, policy_infer, old_from)
    started = [s.name for s in role_specs(cfg)]
    assert ("reference" in started) == reference
    assert ("reference" in derive(cfg).roles_per_pool["main"]) == reference
    # The KL is measured before the update only when the reference ran and policy log-probs were known then.
    assert passes.kl_measured == (reference and old_from != "first_forward")


def test_engine_old_logprobs_refused_with_an_off_policy_correction(tmp_path):
    from rlhf_dist.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.old_logprobs: 'engine' cannot be combined"):
        config(tmp_path, "ppo.old_logprobs=engine", "ppo.is_correction=token_mask")


def test_unused_reference_placement_is_not_checked(tmp_path):
    # 16 samples do not split over 3 reference ranks; without a KL term the reference does not exist.
    cfg = config(tmp_path, "placement.reference.num_gpus=3")
    assert "reference" not in [s.name for s in role_specs(cfg)]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, P, R = 6, 5, 7
    input_ids = torch.randint(3, 300, (B, P + R), generator=g)
    attention_mask = torch.ones(B, P + R, dtype=torch.long)
    attention_mask[0, :2] = 0  # left padding
    mask = torch.ones(B, R)
    mask[1, 4:] = 0  # a short response
    mask[3, 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask,
            "advantages": torch.randn(B, R, generator=g) * mask}


@pytest.mark.parametrize("name,aggregation", [("ppo", "token_mean"), ("clip_higher", "seq_mean_token_mean")])
def test_first_forward_old_logprobs_match_the_recomputed_path(tiny_model, name, aggregation):
    from rlhf_dist.learner import models

    model = models.load_causal_lm(tiny_model, "float32", "sdpa")
    batch = _batch()
    tokens = batch["input_ids"][:, -batch["mask"].shape[1]:]
    kw = dict(name=name, clip_eps_high=0.28, aggregation=aggregation, kl_loss_coef=0.05, entropy_coef=0.01)

    def loss_and_grads(loss_fn, b):
        model.zero_grad()
        logits = models.response_logits(model, b)
        out = {"logprobs": models.token_logprobs(logits, tokens, 1.0), "entropy": torch.zeros_like(b["mask"])}
        loss, metrics = loss_fn(out, b)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()], metrics

    # Today's path: a separate pass without gradients gives the old log-probs.
    with torch.no_grad():
        old = models.token_logprobs(models.response_logits(model.eval(), batch), tokens, 1.0)
    ref = old + 0.1 * torch.randn_like(old)
    model.train()
    want_loss, want_grads, _ = loss_and_grads(PolicyLoss(**kw), {**batch, "old_logprobs": old, "ref_logprobs": ref})
    engine = old + 1e-3 * batch["mask"]  # the engines' log-probs, slightly off
    got_loss, got_grads, metrics = loss_and_grads(
        PolicyLoss(**kw, old_from_forward=True), {**batch, "ref_logprobs": ref, "engine_logprobs": engine}
    )
    assert torch.allclose(got_loss, want_loss, rtol=1e-5, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in got_grads)
    assert metrics[LOGPROB_PROBE] == pytest.approx(1e-3, rel=1e-2)  # the probe measured in the update's forward


def test_probe_reduces_by_max_over_ranks():
    rows = [{"policy/loss": 1.0, LOGPROB_PROBE: 1e-6}, {"policy/loss": 3.0, LOGPROB_PROBE: 4e-6}]
    assert reduce_ranks(rows) == {"policy/loss": 2.0, LOGPROB_PROBE: 4e-6}
