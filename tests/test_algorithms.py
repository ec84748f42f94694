"""PPO math against hand-worked values and independent, plainly written float64 loops."""
import math

import pytest
import torch

from rlhf_dist.algorithms.policy_losses import aggregate, ppo_clip
from rlhf_dist.algorithms import (
    compute_gae,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    masked_whiten,
    shape_token_rewards,
    value_loss_clipped,
)


def gae_loop(rewards, values, lengths, gamma, lam):
    """Reference GAE: one episode per row, a plain loop in Python floats (float64)."""
    advs, rets = [], []
    for r, v, n in zip(rewards, values, lengths):
        adv = [0.0] * len(r)
        running = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * next_v - v[t]
            running = delta + gamma * lam * running
            adv[t] = running
        advs.append(adv)
        rets.append([adv[t] + v[t] if t < n else 0.0 for t in range(len(r))])
    return advs, rets


def random_batch(seed, B=5, T=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    lengths[0] = T  # one full row, one single-token row
    lengths[-1] = 1
    mask = torch.zeros(B, T, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return rewards, values, mask, lengths


def test_gae_hand_worked():
    # One row, 3 tokens, gamma=1, lam=1: advantages are reward-to-go minus value.
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.25, 0.75]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[0.5, 0.75, 0.25]]
    assert ret.tolist() == [[1.0, 1.0, 1.0]]
    # gamma=0.5, lam=0.5 by hand: deltas d2=1-0.75=0.25, d1=0+0.5*0.75-0.25=0.125, d0=0+0.5*0.25-0.5=-0.375
    adv, _ = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    a2 = 0.25
    a1 = 0.125 + 0.25 * a2
    a0 = -0.375 + 0.25 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_loop_with_padding(seed, gamma, lam):
    rewards, values, mask, lengths = random_batch(seed)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-12)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_kl_estimators_hand_worked():
    logp = torch.tensor([math.log(0.5), math.log(0.2)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.4)], dtype=torch.float64)
    k1 = kl_estimate(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([math.log(2), math.log(0.5)], dtype=torch.float64))
    k2 = kl_estimate(logp, ref, "k2")
    assert torch.allclose(k2, 0.5 * torch.tensor([math.log(2) ** 2, math.log(0.5) ** 2], dtype=torch.float64))
    # k3 = r - log r - 1 with r = ref/p: r = 0.5 -> 0.5 + log 2 - 1; r = 2 -> 2 - log 2 - 1
    k3 = kl_estimate(logp, ref, "k3")
    assert torch.allclose(k3, torch.tensor([0.5 + math.log(2) - 1, 1 - math.log(2)], dtype=torch.float64))
    assert (k3 >= 0).all()
    with pytest.raises(KeyError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k9")


def test_kl_estimators_are_unbiased_for_true_kl():
    # Sampling from p, the means of k1 and k3 both approach KL(p || q).
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[samples], q.log()[samples], kind).mean().item()
        assert abs(est - true_kl) < 0.01, (kind, est, true_kl)


def test_shape_token_rewards_puts_score_on_last_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float64)
    kl = torch.full((2, 4), 0.5, dtype=torch.float64)
    r = shape_token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, -0.05, 1.95, 0.0], [-1.05, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(r, expected)


def ppo_loss_loop(logp, old, adv, mask, eps):
    total, count = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[i])):
            if mask[i][t]:
                ratio = math.exp(logp[i][t] - old[i][t])
                total += max(-adv[i][t] * ratio, -adv[i][t] * min(max(ratio, 1 - eps), 1 + eps))
                count += 1
    return total / count


@pytest.mark.parametrize("seed", range(4))
def test_policy_loss_matches_loop(seed):
    _, _, mask, _ = random_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    logp = torch.randn(mask.shape, generator=g, dtype=torch.float64) * 0.3 - 1
    old = logp + torch.randn(mask.shape, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    per_token, metrics = ppo_clip(logp, old, adv, mask, 0.2)
    loss = aggregate(per_token, mask, "token_mean")
    assert loss.item() == pytest.approx(ppo_loss_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2), abs=1e-12)
    assert 0 <= metrics["policy/clipfrac"] <= 1


def test_policy_loss_hand_worked_clipping():
    mask = torch.ones(1, 2, dtype=torch.float64)
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    # token 0: ratio 1.5 > 1.2 with A>0 -> clipped: -1.2; token 1: ratio 0.5 < 0.8 with A<0 -> clipped: 0.8
    per_token, m = ppo_clip(logp, old, adv, mask, 0.2)
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx((-1.2 + 0.8) / 2)
    assert m["policy/clipfrac"] == 1.0
    # Gradient is zero where clipped.
    logp.requires_grad_(True)
    aggregate(ppo_clip(logp, old, adv, mask, 0.2)[0], mask, "token_mean").backward()
    assert torch.all(logp.grad == 0)


def test_value_loss_hand_worked():
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.1, 9.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    # token 0: unclipped (0.5-1)^2=0.25, clipped (0.2-1)^2=0.64 -> 0.64; token 1: 0.01 vs 0.01 -> 0.01
    loss, _ = value_loss_clipped(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)


def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])
    w = masked_whiten(x, mask)
    vals = w[mask == 1]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert vals.std().item() == pytest.approx(1.0, abs=1e-6)
    assert (w[mask == 0] == 0).all()


def test_entropy_from_logits():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(expected, rel=1e-6)
