"""The estimator and loss family, each against an independent plain-Python float64 loop and hand-worked
cases, including padded masks and groups whose rewards are all equal."""
import math
import statistics

import pytest
import torch

from rlhf_dist.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    estimate_advantages,
    informative_groups,
    overlong_penalty,
)
from rlhf_dist.algorithms.core import kl_estimate
from rlhf_dist.algorithms.losses import PolicyLoss
from rlhf_dist.algorithms.kl import AdaptiveKLController
from rlhf_dist.algorithms.policy_losses import aggregate, dual_clip, gspo, ppo_clip

G = 4  # samples per prompt


def batch(seed, groups=3, T=6, equal_group=True):
    g = torch.Generator().manual_seed(seed)
    B = groups * G
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    lengths[0], lengths[1] = T, 1
    mask = torch.zeros(B, T, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    if equal_group:
        scores[G : 2 * G] = 0.5  # a group whose rewards are all equal
    kl = torch.randn(B, T, generator=g, dtype=torch.float64).abs() * 0.1 * mask
    return AdvantageInputs(scores=scores, mask=mask, kl=kl, kl_coef=0.1, group_size=G), lengths


def per_token(values_per_seq, lengths, T):
    return [[v if t < n else 0.0 for t in range(T)] for v, n in zip(values_per_seq, lengths)]


def loop_grpo(scores, eps=1e-6, std=True):
    out = []
    for g in range(0, len(scores), G):
        grp = scores[g : g + G]
        mean = sum(grp) / G
        sd = statistics.stdev(grp) if std else 1.0
        out += [(s - mean) / ((sd + eps) if std else 1.0) for s in grp]
    return out


def loop_rloo(scores):
    out = []
    for g in range(0, len(scores), G):
        grp = scores[g : g + G]
        out += [s - (sum(grp) - s) / (G - 1) for s in grp]
    return out


def loop_reinforce_pp(scores, kl, lengths, kl_coef, gamma=1.0):
    returns = []
    for s, k, n in zip(scores, kl, lengths):
        r = [-kl_coef * k[t] for t in range(n)]
        r[n - 1] += s
        ret, running = [0.0] * len(k), 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * running
            ret[t] = running
        returns.append(ret)
    flat = [returns[i][t] for i, n in enumerate(lengths) for t in range(n)]
    mean = sum(flat) / len(flat)
    sd = statistics.stdev(flat)
    adv = [[(returns[i][t] - mean) / math.sqrt(sd**2 + 1e-8) if t < n else 0.0 for t in range(len(kl[0]))] for i, n in enumerate(lengths)]
    return adv, returns


@pytest.mark.parametrize("seed", range(4))
def test_group_estimators_match_loops(seed):
    inp, lengths = batch(seed)
    T = inp.mask.shape[1]
    s = inp.scores.tolist()
    cases = {"grpo": loop_grpo(s), "dr_grpo": loop_grpo(s, std=False), "rloo": loop_rloo(s)}
    for name, ref in cases.items():
        adv, ret = estimate_advantages(name, inp)
        assert torch.allclose(adv, torch.tensor(per_token(ref, lengths, T), dtype=torch.float64), atol=1e-9), name
        # The all-equal group carries no signal.
        assert torch.all(adv[G : 2 * G] == 0), name


@pytest.mark.parametrize("seed", range(4))
def test_reinforce_pp_matches_loop(seed):
    inp, lengths = batch(seed)
    adv, ret = estimate_advantages("reinforce_pp", inp)
    ref_adv, ref_ret = loop_reinforce_pp(inp.scores.tolist(), inp.kl.tolist(), lengths, inp.kl_coef)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-6)


def test_reinforce_pp_baseline_subtracts_group_mean_first():
    inp, lengths = batch(0)
    s = inp.scores.tolist()
    centred = [x - sum(s[g : g + G]) / G for g in range(0, len(s), G) for x in s[g : g + G]]
    ref_adv, _ = loop_reinforce_pp(centred, inp.kl.tolist(), lengths, inp.kl_coef)
    adv, _ = estimate_advantages("reinforce_pp_baseline", inp)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-6)


def test_grpo_hand_worked():
    inp = AdvantageInputs(
        scores=torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), mask=torch.ones(4, 1, dtype=torch.float64),
        kl=torch.zeros(4, 1, dtype=torch.float64), kl_coef=0.0, group_size=2,
    )
    adv, _ = estimate_advantages("grpo", inp)
    # each pair: mean 0.5, sample std sqrt(0.5)
    z = 0.5 / math.sqrt(0.5)
    assert adv[:, 0].tolist() == pytest.approx([z, -z, -z, z], abs=1e-5)
    adv, _ = estimate_advantages("rloo", inp)
    assert adv[:, 0].tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])


def test_estimator_requirements_are_enforced():
    inp, _ = batch(0)
    with pytest.raises(ValueError, match="'gae' needs critic values"):
        estimate_advantages("gae", inp)
    single = AdvantageInputs(inp.scores, inp.mask, inp.kl, 0.0, group_size=1)
    with pytest.raises(ValueError, match="needs rollout.n_samples_per_prompt >= 2"):
        estimate_advantages("grpo", single)
    assert {n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic} == {"gae"}


def loop_policy_loss(logp, old, adv, mask, lo, hi, dual_c=None):
    out = []
    for i in range(len(logp)):
        row = []
        for t in range(len(logp[i])):
            r = math.exp(logp[i][t] - old[i][t])
            a = adv[i][t]
            v = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            if dual_c is not None and a < 0:
                v = min(v, -a * dual_c)
            row.append(v)
        out.append(row)
    return out


def rand_policy_inputs(seed):
    inp, _ = batch(seed)
    g = torch.Generator().manual_seed(50 + seed)
    logp = torch.randn(inp.mask.shape, generator=g, dtype=torch.float64) * 0.5 - 1
    old = logp + torch.randn(inp.mask.shape, generator=g, dtype=torch.float64) * 0.6
    adv = torch.randn(inp.mask.shape, generator=g, dtype=torch.float64) * inp.mask
    return logp, old, adv, inp.mask


@pytest.mark.parametrize("seed", range(4))
def test_clip_variants_match_loops(seed):
    logp, old, adv, mask = rand_policy_inputs(seed)
    L, O, A, M = logp.tolist(), old.tolist(), adv.tolist(), mask.tolist()
    got, _ = ppo_clip(logp, old, adv, mask, clip_eps_low=0.2)
    assert torch.allclose(got, torch.tensor(loop_policy_loss(L, O, A, M, 0.2, 0.2), dtype=torch.float64), atol=1e-12)
    got, _ = ppo_clip(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    assert torch.allclose(got, torch.tensor(loop_policy_loss(L, O, A, M, 0.2, 0.28), dtype=torch.float64), atol=1e-12)
    got, m = dual_clip(logp, old, adv, mask, clip_eps_low=0.2, dual_clip_c=3.0)
    assert torch.allclose(got, torch.tensor(loop_policy_loss(L, O, A, M, 0.2, 0.2, dual_c=3.0), dtype=torch.float64), atol=1e-12)


def test_dual_clip_hand_worked():
    mask = torch.ones(1, 1, dtype=torch.float64)
    # ratio e^2 ~ 7.39 with A = -1: plain PPO loss is 7.39, dual clip bounds it at c * |A| = 3.
    got, m = dual_clip(torch.tensor([[2.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                       torch.tensor([[-1.0]], dtype=torch.float64), mask, dual_clip_c=3.0)
    assert got.item() == pytest.approx(3.0) and m["policy/dual_clipfrac"] == 1.0


def test_gspo_sequence_ratio_value_and_gradient():
    logp, old, adv, mask = rand_policy_inputs(1)
    adv = adv[:, :1].expand_as(adv) * mask  # GSPO uses one advantage per sequence
    logp = logp.clone().requires_grad_(True)
    per_tok, _ = gspo(logp, old, adv, mask, clip_eps_low=10.0, clip_eps_high=10.0)  # wide clip: no clipping
    loss = aggregate(per_tok, mask, "seq_mean_token_mean")
    loss.backward()
    # Loop: s_i = exp(mean_t(logp - old)); loss = mean_i(-A_i * s_i); d/dlogp_t = -A_i * s_i / (|y_i| * B)
    B = logp.shape[0]
    for i in range(B):
        n = int(mask[i].sum())
        s_i = math.exp(sum(logp[i, t].item() - old[i, t].item() for t in range(n)) / n)
        for t in range(logp.shape[1]):
            want = -adv[i, 0].item() * s_i / (n * B) if t < n else 0.0
            assert logp.grad[i, t].item() == pytest.approx(want, abs=1e-9)
    ref_loss = sum(-adv[i, 0].item() * math.exp(sum(logp[i, t].item() - old[i, t].item() for t in range(int(mask[i].sum()))) / int(mask[i].sum())) for i in range(B)) / B
    assert loss.item() == pytest.approx(ref_loss, abs=1e-9)


def test_aggregations_match_loops():
    logp, old, adv, mask = rand_policy_inputs(2)
    x = torch.randn(mask.shape, dtype=torch.float64)
    rows = [[x[i, t].item() for t in range(mask.shape[1]) if mask[i, t]] for i in range(mask.shape[0])]
    flat = [v for r in rows for v in r]
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(sum(flat) / len(flat))
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx(sum(sum(r) / len(r) for r in rows) / len(rows))
    assert aggregate(x, mask, "seq_mean_token_sum_norm", 8.0).item() == pytest.approx(sum(sum(r) / 8.0 for r in rows) / len(rows))
    with pytest.raises(ValueError, match="needs a norm_constant"):
        aggregate(x, mask, "seq_mean_token_sum_norm")


def test_policy_loss_object_adds_kl_term_and_entropy():
    logp, old, adv, mask = rand_policy_inputs(3)
    ref = old - 0.1
    entropy = torch.rand(mask.shape, dtype=torch.float64)
    loss_fn = PolicyLoss(name="ppo", kl_loss_coef=0.5, kl_loss_estimator="k3", entropy_coef=0.01)
    loss, metrics = loss_fn({"logprobs": logp, "entropy": entropy},
                            {"mask": mask, "old_logprobs": old, "advantages": adv, "ref_logprobs": ref})
    pg, _ = ppo_clip(logp, old, adv, mask)
    kl = kl_estimate(logp, ref, "k3")
    want = aggregate(pg + 0.5 * kl, mask, "token_mean") - 0.01 * aggregate(entropy, mask, "token_mean")
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert metrics["policy/kl_loss"] == pytest.approx(aggregate(kl, mask, "token_mean").item())


def test_adaptive_kl_controller_moves_toward_target():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(2.0, n_samples=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(0.9, n_samples=10) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))


@pytest.mark.parametrize("horizon,n_samples", [(1, 128), (64, 128), (100, 512), (10000, 10**9)])
def test_adaptive_kl_coefficient_never_turns_negative(horizon, n_samples):
    """Adversarial KL values with a horizon at or below the samples per step: before the cap, one step with KL
    far under target and n/horizon > 5 made the factor 1 - 0.2 * n/horizon negative, the penalty a bonus."""
    ctl = AdaptiveKLController(0.05, target=0.3, horizon=horizon)
    seen = []
    for kl in [0.0, -5.0, 1e-12, 1e9, float("nan"), float("inf"), float("-inf"), 0.0, -1e30] * 20:
        before = ctl.value
        v = ctl.update(kl, n_samples)
        seen.append(v)
        assert v >= 0 and v == v  # never below zero, never NaN
        assert 0.8 * before - 1e-15 <= v <= 1.2 * before + 1e-15  # one step moves it by at most 20%
    assert min(seen) > 0  # multiplied by factors in [0.8, 1.2] it stays positive (no underflow in 180 steps)
    low = AdaptiveKLController(0.05, target=0.3, horizon=horizon)
    assert low.update(0.0, n_samples) == pytest.approx(0.05 * 0.8)  # weight capped at 1: the full clipped error
    assert low.update(float("nan"), n_samples) == pytest.approx(0.05 * 0.8)  # a non-finite KL changes nothing


def test_overlong_penalty_and_informative_groups():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    got = overlong_penalty(lengths, max_len=16, buffer=4, penalty=1.0)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert informative_groups(scores, 2).tolist() == [False, True, False]


@pytest.mark.parametrize("seed", range(3))
def test_kl_estimators_match_loops(seed):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4
    ref = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4
    loops = {
        "k1": lambda a, b: a - b,
        "k2": lambda a, b: 0.5 * (a - b) ** 2,
        "k3": lambda a, b: math.exp(b - a) - (b - a) - 1,
    }
    for kind, f in loops.items():
        want = [[f(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(logp.tolist(), ref.tolist())]
        assert torch.allclose(kl_estimate(logp, ref, kind), torch.tensor(want, dtype=torch.float64), atol=1e-12), kind


def test_shipped_arithmetic_prompts_are_the_generators_output(tmp_path):
    """configs/data/arith_prompts.jsonl is write_arith_jsonl(max_operand=4): regenerate and compare."""
    from pathlib import Path

    from rlhf_dist.data.arith import write_arith_jsonl

    shipped = Path(__file__).resolve().parents[1] / "configs" / "data" / "arith_prompts.jsonl"
    assert write_arith_jsonl(tmp_path / "a.jsonl", max_operand=4).read_text() == shipped.read_text()
