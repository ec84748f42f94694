"""rlhf-dist plan: memory formulas against hand-computed values; layouts that fit and ones that do not."""
import json
from pathlib import Path

import pytest

from rlhf_dist.commands.cli import main
from rlhf_dist.config import load_config
from rlhf_dist.commands.plan import GiB, ModelShape, activation_bytes, plan, training_state_bytes

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


GPU_EXAMPLES = ["qwen0.5b_1gpu.yaml", "qwen7b_8gpu.yaml", "llama70b_4node.yaml"]


@pytest.mark.parametrize("name", GPU_EXAMPLES)
def test_every_gpu_example_counts_the_vllm_reservation_and_keeps_headroom(name, capsys):
    cfg = load_config(ROOT / "configs" / name)
    result = plan(cfg)
    roll = result["roles"]["rollout"]
    assert roll["reserved_gib"] == pytest.approx(cfg.rollout.gpu_memory_utilization * cfg.cluster.gpu_memory_gb)
    # The reservation, not the estimate, is what the engine's GPUs lose; plus the sync group's buffers.
    assert roll["total_gib"] == pytest.approx(roll["reserved_gib"] + roll["overhead_gib"]) and roll["overhead_gib"] > 0
    for pool in result["pools"].values():
        assert pool["headroom"] >= 0.10 and pool["verdict"] == "fits", pool
        assert pool["per_gpu_gib"] == pytest.approx(sum(result["roles"][r]["total_gib"] for r in pool["roles"]))
    assert result["fits"] and not result["warnings"]
    assert main(["plan", str(ROOT / "configs" / name)]) == 0
    out = capsys.readouterr().out
    assert "vLLM reservation" in out and "headroom" in out and "host" in out
    # Each example says plainly that a real checkpoint must be supplied.
    assert "YOU MUST SUPPLY the checkpoint" in (ROOT / "configs" / name).read_text()


def test_the_1gpu_example_reserves_24_gib_for_vllm():
    result = plan(load_config(ROOT / "configs" / "qwen0.5b_1gpu.yaml"))
    assert result["roles"]["rollout"]["reserved_gib"] == pytest.approx(0.3 * 80)
    assert result["pools"]["gpu"]["per_gpu_gib"] > 24 + 3 * 0.5  # every learner process has a CUDA context


def test_under_10_percent_headroom_warns_and_over_100_refuses(capsys):
    cfg = str(ROOT / "configs" / "qwen7b_8gpu.yaml")
    assert main(["plan", cfg, "rollout.gpu_memory_utilization=0.95"]) == 0
    captured = capsys.readouterr()
    assert "TIGHT" in captured.out and "warning: pool gen: only 4% of GPU memory left" in captured.err
    assert main(["plan", str(ROOT / "configs" / "qwen0.5b_1gpu.yaml"), "rollout.gpu_memory_utilization=0.9"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_a_reservation_smaller_than_the_weights_is_refused(capsys):
    assert main(["plan", str(ROOT / "configs" / "qwen7b_8gpu.yaml"), "rollout.gpu_memory_utilization=0.05"]) == 1
    assert "REFUSED: rollout.gpu_memory_utilization reserves 4.0 GiB, less than the engine's weights (7.1 GiB)" in capsys.readouterr().out


def test_host_memory_is_judged_when_given(capsys):
    cfg = str(ROOT / "configs" / "llama70b_4node.yaml")
    result = plan(load_config(cfg))
    learn = result["pools"]["learn"]
    # Offloaded Adam states and ZeRO-3 partitions of 8 ranks per node, for policy and critic: 14 bytes x P / 24 each.
    assert learn["host_per_node_gib"] > 2 * 8 * 14 * result["model"]["params"] / 24 / GiB
    assert main(["plan", cfg, "cluster.host_memory_gb=512"]) == 1
    assert "over cluster.host_memory_gb=512" in capsys.readouterr().out


@pytest.mark.parametrize("tp,heads,kv,ok", [(2, 14, 2, True), (4, 14, 2, False), (8, 64, 8, True), (8, 32, 4, True),
                                            (3, 12, 4, False), (14, 28, 4, False), (1, 7, 7, True)])
def test_tp_against_heads_and_kv_heads(tp, heads, kv, ok):
    from rlhf_dist.model_shape import tp_problem

    assert (tp_problem(tp, heads, kv) is None) == ok


@pytest.mark.parametrize("config,tp,pool,message", [
    ("qwen0.5b_1gpu.yaml", 4, "gpu", "placement.rollout.tensor_parallel_size=4: 14 attention heads are not divisible by 4"),
    ("qwen7b_8gpu.yaml", 14, "gen", "placement.rollout.tensor_parallel_size=14: 4 key/value heads neither divide nor are divisible by 14"),
])
def test_plan_refuses_tp_that_does_not_split_the_heads(config, tp, pool, message, capsys):
    # Enough GPUs in the pool, so that only the heads are wrong.
    assert main(["plan", str(ROOT / "configs" / config), f"placement.rollout.tensor_parallel_size={tp}",
                 "placement.rollout.num_engines=1", f"placement.pools.{pool}.gpus_per_node={tp}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_train_refuses_tp_that_does_not_split_the_heads_before_any_actor(tmp_path, capsys):
    import yaml

    from rlhf_dist.data.tiny_chat import make_chat_model
    from tests.conftest import demo_config_dict

    model = make_chat_model(tmp_path / "m", "llama3")  # 2 heads, 1 key/value head
    (tmp_path / "p.jsonl").write_text('{"prompt": "the cat"}\n')
    d = demo_config_dict(str(model), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"]["pools"]["main"]["gpus_per_node"] = 3
    d["placement"]["rollout"] = {"pool": "main", "num_engines": 1, "tensor_parallel_size": 3}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "placement.rollout.tensor_parallel_size=3: 2 attention heads are not divisible by 3" in err
    assert not (tmp_path / "run").exists()


def test_shared_processes_pay_one_process_overhead(tiny_model, tmp_path):
    """placement.share_processes on the demo's layout (policy and critic ZeRO-2 on 2 GPUs, a reference, an
    engine): policy, critic and reference rank 0 share GPU 0's process, whose overhead is the largest of theirs
    (1 GiB: one CUDA context and default group) instead of 1 + 1 + 0.5; each extra member saves one process's
    host memory (2 GiB): 3 on GPU 0 and 2 on GPU 1 save 6 GiB on the node."""
    from tests.conftest import demo_config_dict

    d = demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"].update({"policy": {"pool": "main", "num_gpus": 2, "zero_stage": 2}, "rollout": {"pool": "main", "num_engines": 1}})
    alone = plan(load_config(None, base=d))["pools"]["main"]
    d["placement"]["share_processes"] = True
    shared = plan(load_config(None, base=d))["pools"]["main"]
    assert alone["shared_process_saving_gib"] == 0 and shared["shared_process_saving_gib"] == pytest.approx(1.5)
    assert alone["per_gpu_gib"] - shared["per_gpu_gib"] == pytest.approx(1.5)
    assert alone["host_per_node_gib"] - shared["host_per_node_gib"] == pytest.approx(6.0)


@pytest.mark.parametrize("nodes,message", [
    ("[8, 8, 8]", "placement.pools.gen: 1 node(s) x 8 GPUs cannot be placed beside pool(s) learn (GPUs per node: 8, 8, 8;"),
    ("[8, 8, 8, 4, 4]", "placement.pools.gen: 1 node(s) x 8 GPUs cannot be placed beside pool(s) learn (GPUs per node: 8, 8, 8, 4, 4;"),
    ("[16, 8, 4]", "placement.pools.learn: needs 3 node(s) with 8 GPUs each, but the cluster has 2 such node(s)"),
])
def test_plan_refuses_pools_that_cannot_be_placed_per_node(nodes, message, capsys):
    # 32 GPUs in all would do for the 70B layout, but not as 3 learner nodes and an engine node of 8 each.
    assert main(["plan", str(ROOT / "configs" / "llama70b_4node.yaml"), f"cluster.node_gpus={nodes}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_plan_accepts_the_nodes_the_layout_was_made_for(capsys):
    assert main(["plan", str(ROOT / "configs" / "llama70b_4node.yaml"), "cluster.node_gpus=[8, 8, 8, 8]"]) == 0
