"""SFT, reward-model and DPO losses against hand-worked values and plain float64 loops."""
import math

import pytest
import torch

from rlhf_dist.algorithms.preference import bradley_terry_loss, dpo_loss, sequence_logprob, sft_loss


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_sft_loss_counts_response_tokens_only():
    logp = t([[-1.0, -2.0, -99.0], [-0.5, -99.0, -99.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])  # prompt and padding positions are 0
    assert sft_loss(logp, mask).item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    assert sequence_logprob(logp, mask).tolist() == [-3.0, -0.5]


def test_bradley_terry_hand_worked():
    loss, m = bradley_terry_loss(t([2.0, 0.0]), t([1.0, 1.0]))
    want = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert loss.item() == pytest.approx(want)
    assert m["rm/accuracy"] == 0.5 and m["rm/margin"] == pytest.approx(0.0)
    loss_m, _ = bradley_terry_loss(t([2.0]), t([1.0]), margin=1.0)  # margin eats the difference
    assert loss_m.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_matches_loop(kind):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 3 - 10 for _ in range(4))
    beta = 0.1
    loss, m = dpo_loss(pc, pr, rc, rr, beta, kind)
    total = 0.0
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = (a - b) - (c - d)
        total += -math.log(1 / (1 + math.exp(-beta * h))) if kind == "sigmoid" else (h - 1 / (2 * beta)) ** 2
    assert loss.item() == pytest.approx(total / 6, rel=1e-12)
    assert m["dpo/margin"] == pytest.approx(m["dpo/rewards_chosen"] - m["dpo/rewards_rejected"])


def test_dpo_at_the_reference_is_log2_and_gradient_favours_chosen():
    pc, pr = t([-5.0]).requires_grad_(True), t([-5.0]).requires_grad_(True)
    loss, m = dpo_loss(pc, pr, t([-5.0]), t([-5.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2)) and m["dpo/accuracy"] == 0.0
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending raises chosen, lowers rejected
    with pytest.raises(KeyError, match="unknown DPO loss"):
        dpo_loss(pc, pr, pc, pr, 0.1, kind="hinge2")
