"""Off-policy correction (rlhf_dist.algorithms.correction): every number below is worked by hand."""
import math

import pytest
import torch

from rlhf_dist.algorithms.correction import CORRECTIONS, correction_weights, mismatch_metrics, off_policy_terms
from rlhf_dist.algorithms.losses import PolicyLoss
from rlhf_dist.config import ConfigError, derive, load_config

from tests.test_config import base


def _lp(ratios):
    """Learner log-probs whose ratio to an engine log-prob of 0 is `ratios`."""
    return torch.log(torch.tensor(ratios, dtype=torch.float64))


# One row of token ratios 0.5, 1, 3 and a padding token (ratio 1.05, must never count).
TOKEN = _lp([[0.5, 1.0, 3.0, 1.05]])
TOKEN_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
# Two rows: ratios 2, 8 (geometric mean 4) and 0.25, 1, padding (geometric mean 0.5).
SEQ = _lp([[2.0, 8.0, 1.0], [0.25, 1.0, 7.0]])
SEQ_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


def test_token_tis_truncates_at_the_cap():
    w, m = correction_weights("token_tis", TOKEN, torch.zeros_like(TOKEN), TOKEN_MASK, cap=2.0, band=(0.8, 2.0))
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 2.0, 0.0]], dtype=torch.float64))
    assert m["correction/clipped_frac"] == pytest.approx(1 / 3)


def test_token_mask_drops_tokens_outside_the_band():
    w, m = correction_weights("token_mask", TOKEN, torch.zeros_like(TOKEN), TOKEN_MASK, cap=2.0, band=(0.8, 2.0))
    assert torch.equal(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    assert m["correction/masked_frac"] == pytest.approx(2 / 3)


def test_sequence_variants_use_the_geometric_mean_ratio():
    zero = torch.zeros_like(SEQ)
    w, m = correction_weights("seq_tis", SEQ, zero, SEQ_MASK, cap=3.0, band=(0.4, 2.0))
    assert torch.allclose(w, torch.tensor([[3.0, 3.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    assert m["correction/clipped_seq_frac"] == pytest.approx(0.5)
    w, m = correction_weights("seq_mask", SEQ, zero, SEQ_MASK, cap=3.0, band=(0.4, 2.0))
    assert torch.equal(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64))
    assert m["correction/masked_seq_frac"] == pytest.approx(0.5)


def test_ratio_is_learner_over_engine():
    # learner log-prob -1, engine -1 - log 4: ratio 4, truncated to the cap 3.
    learner = torch.tensor([[-1.0]], dtype=torch.float64)
    w, _ = correction_weights("token_tis", learner, learner - math.log(4), torch.ones_like(learner), 3.0, (0.5, 2.0))
    assert w.item() == pytest.approx(3.0)


def test_mismatch_metrics():
    m = mismatch_metrics(TOKEN, torch.zeros_like(TOKEN), TOKEN_MASK)
    # k3 per token r - 1 - log r: 0.5 - 1 + log 2, 0, 3 - 1 - log 3; mean over the 3 real tokens.
    expected = ((0.5 - 1 + math.log(2)) + 0.0 + (2 - math.log(3))) / 3
    assert m["mismatch/kl"] == pytest.approx(expected)
    assert m["mismatch/ratio_outside_band_frac"] == pytest.approx(2 / 3)  # 0.5 and 3; 1.05 is padding


def test_none_leaves_the_loss_alone_and_still_reports_mismatch():
    w, m = off_policy_terms("none", TOKEN, torch.zeros_like(TOKEN), TOKEN_MASK, 2.0, (0.8, 2.0))
    assert w is None and set(m) == {"mismatch/kl", "mismatch/ratio_outside_band_frac"}
    w, m = off_policy_terms("token_tis", TOKEN, torch.zeros_like(TOKEN), TOKEN_MASK, 2.0, (0.8, 2.0))
    assert w is not None and "correction/clipped_frac" in m and "mismatch/kl" in m


def test_policy_loss_weighs_tokens_and_masks_zero_weights():
    lp = torch.zeros(1, 3)
    batch = {"mask": torch.ones(1, 3), "old_logprobs": lp, "advantages": torch.tensor([[1.0, 2.0, 3.0]])}
    outputs = {"logprobs": lp, "entropy": torch.zeros(1, 3)}
    loss, _ = PolicyLoss()(outputs, batch)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1: mean of -A
    loss, _ = PolicyLoss()(outputs, {**batch, "is_weights": torch.tensor([[0.5, 0.0, 2.0]])})
    # (-0.5 + -6) over the 2 tokens left: the masked token leaves the denominator too.
    assert loss.item() == pytest.approx(-3.25)


def test_config_names_come_from_the_registry(tmp_path):
    for name in CORRECTIONS:
        assert load_config(None, [f"ppo.is_correction={name}"], base=base(tmp_path)).ppo.is_correction == name
    with pytest.raises(ConfigError, match="ppo.is_correction"):
        load_config(None, ["ppo.is_correction=bogus"], base=base(tmp_path))
    with pytest.raises(ConfigError, match="ppo.is_band"):
        derive(load_config(None, ["ppo.is_band=[2.0,0.5]"], base=base(tmp_path)))


def separate_pools(tmp_path) -> dict:
    d = base(tmp_path)
    d["placement"]["pools"]["gen"] = {"nodes": 1, "gpus_per_node": d["placement"]["rollout"]["num_engines"]}
    d["placement"]["rollout"]["pool"] = "gen"
    return d


def test_async_mode_needs_separate_pools(tmp_path):
    with pytest.raises(ConfigError) as e:
        derive(load_config(None, ["rollout.max_staleness=1"], base=base(tmp_path)))
    assert str(e.value).startswith("rollout.max_staleness: 1 needs the rollout engines on their own pool")
    assert derive(load_config(None, ["rollout.max_staleness=2", "run.steps=3"], base=separate_pools(tmp_path)))
    with pytest.raises(ConfigError, match="rollout.max_staleness: asynchronous mode does not support ppo.dynamic_sampling"):
        derive(load_config(None, ["rollout.max_staleness=1", "ppo.dynamic_sampling=true", "rollout.n_samples_per_prompt=2"],
                           base=separate_pools(tmp_path)))


def test_pinned_cores_name_real_pools(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster.cpu_cores: \['gne'\] not in placement.pools"):
        load_config(None, ["cluster.cpu_cores={gne: '1'}"], base=separate_pools(tmp_path))


def test_cli_refuses_async_on_a_colocated_layout_with_exit_2(capsys):
    from rlhf_dist.commands.cli import main

    # The shipped synchronous example puts rollout on the policy's pool.
    assert main(["train", "configs/grpo_arith_cpu.yaml", "rollout.max_staleness=1"]) == 2
    err = capsys.readouterr().err
    assert "rollout.max_staleness: 1 needs the rollout engines on their own pool" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
