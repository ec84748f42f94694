"""rlhf-dist plan: memory formulas against hand-computed values; layouts that fit and ones that do not."""
import json
from pathlib import Path

import pytest

from rlhf_dist.cli import main
from rlhf_dist.config import load_config
from rlhf_dist.plan import GiB, ModelShape, activation_bytes, plan, training_state_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_zero_partitioning_by_stage():
    P, n = 1_000_000, 4
    assert training_state_bytes(P, "bfloat16", 0, n, False) == {"params": 2 * P, "grads": 2 * P, "optimizer": 12 * P}
    assert training_state_bytes(P, "bfloat16", 1, n, False) == {"params": 2 * P, "grads": 2 * P, "optimizer": 3 * P}
    assert training_state_bytes(P, "bfloat16", 2, n, False) == {"params": 2 * P, "grads": P / 2, "optimizer": 3 * P}
    assert training_state_bytes(P, "bfloat16", 3, n, False) == {"params": P / 2, "grads": P / 2, "optimizer": 3 * P}
    assert training_state_bytes(P, "float32", 3, n, True) == {"params": 0.0, "grads": P, "optimizer": 0.0}


def test_activation_formula():
    m = ModelShape(params=0, hidden=1024, layers=10, heads=16, kv_heads=16, head_dim=64, vocab=1000)
    per_layer = 512 * 2 * 1024 * (34 + 5 * 16 * 512 / 1024)
    assert activation_bytes(m, b=2, L=512, dtype_bytes=2, checkpointing=False) == pytest.approx(10 * per_layer)
    assert activation_bytes(m, b=2, L=512, dtype_bytes=2, checkpointing=True) == pytest.approx(10 * 2 * 512 * 2 * 1024 + per_layer)


def test_plan_7b_on_one_node_fits_and_matches_hand_numbers():
    result = plan(load_config(ROOT / "configs" / "qwen7b_8gpu.yaml"))
    P = result["model"]["params"]
    assert 7.0e9 < P < 8.0e9  # Qwen2.5-7B has about 7.6 B parameters
    pol = result["roles"]["policy"]["bytes"]
    assert pol["optimizer"] == pytest.approx(12 * P / 4 / GiB) and pol["params"] == pytest.approx(2 * P / 4 / GiB)
    # KV cache per engine: 2 * 28 layers * 4 kv heads * 128 dims * 2 bytes * (128 samples / 2 engines * 1024 tokens) / TP 2
    kv = 2 * 28 * 4 * 128 * 2 * (128 / 2 * 1024) / 2
    assert result["roles"]["rollout"]["bytes"]["kv_cache"] == pytest.approx(kv / GiB)
    assert result["fits"] and set(result["pools"]) == {"learn", "gen"}


def test_plan_refuses_a_layout_too_small(capsys):
    code = main(["plan", str(ROOT / "configs" / "qwen7b_8gpu.yaml"), "placement.policy.zero_stage=0",
                 "placement.critic.zero_stage=0", "--json"])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["pools"]["learn"]["fits"] is False and out["pools"]["gen"]["fits"] is True
    assert out["roles"]["policy"]["bytes"]["optimizer"] > 80  # 12 bytes x 7.6 B unpartitioned


def test_plan_text_output_for_the_1gpu_example(capsys):
    assert main(["plan", str(ROOT / "configs" / "qwen0.5b_1gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "pool gpu: 1 GPUs, roles policy, critic, reference, rollout" in out and "fits" in out


def test_70b_layout_fits_only_with_offload_and_a_sharded_reference(capsys):
    cfg = ROOT / "configs" / "llama70b_4node.yaml"
    result = plan(load_config(cfg))
    P = result["model"]["params"]
    assert 69e9 < P < 72e9 and result["fits"]
    ref = result["roles"]["reference"]["bytes"]["params"]
    assert ref == pytest.approx((2 * P / 24 + 2 * P / 80) / GiB)  # a partition + one gathered layer
    assert main(["plan", str(cfg), "placement.policy.offload=false", "placement.critic.offload=false"]) == 1
    assert main(["plan", str(cfg), "placement.reference.zero_stage=0"]) == 1
    assert "pool learn: 24 GPUs" in capsys.readouterr().out
