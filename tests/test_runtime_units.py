"""Pure parts of the role runtime and the config's single sources of truth, without Ray."""
import dataclasses
import typing

import pytest

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rlhf_dist.config import PoolConfig, PPOConfig
from rlhf_dist.rollout.trajectory import check_groups
from rlhf_dist.errors import ConfigError
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.runtime.placement import plan_slots
from rlhf_dist.runtime.roles import RoleSpec, role_gpus


def test_config_names_are_the_registries():
    fields = PPOConfig.model_fields
    for field, registry in [("advantage_estimator", ADVANTAGE_ESTIMATORS), ("policy_loss", POLICY_LOSSES),
                            ("loss_aggregation", AGGREGATIONS), ("kl_estimator", KL_ESTIMATORS),
                            ("kl_loss_estimator", KL_ESTIMATORS)]:
        assert set(typing.get_args(fields[field].annotation)) == set(registry), field


def test_slots_give_tensor_parallel_engines_their_own_bundles():
    pools = {"main": PoolConfig(nodes=1, gpus_per_node=4), "gen": PoolConfig(nodes=1, gpus_per_node=4)}
    specs = [RoleSpec("policy", object, "main", 2, None), RoleSpec("reference", object, "main", 1, None),
             RoleSpec("rollout", object, "gen", 2, None, gpus_per_rank=2)]
    layout = pool_layout(pools, role_gpus(specs))
    slots = plan_slots(specs, layout)
    assert [s.bundles for s in slots["rollout"]] == [(0, 1), (2, 3)]
    assert [s.bundle for s in slots["rollout"]] == [0, 2]
    assert [s.gpu_fraction for s in slots["rollout"]] == [1.0, 1.0]
    assert [s.bundles for s in slots["policy"]] == [(0,), (1,)]
    assert [s.gpu_fraction for s in slots["policy"] + slots["reference"]] == [0.5, 0.5, 0.5]
    assert layout.gpus_per_pool == {"main": 4, "gen": 4} and layout.total_gpus == 8


def test_layout_refuses_a_role_bigger_than_its_pool():
    pools = {"main": PoolConfig(nodes=1, gpus_per_node=2)}
    with pytest.raises(ConfigError, match=r"placement.rollout: needs 4 GPUs but pool 'main' has 2 .*short by 2"):
        pool_layout(pools, role_gpus([RoleSpec("rollout", object, "main", 2, None, gpus_per_rank=2)]))
    with pytest.raises(ConfigError, match=r"placement.policy.pool: 'gpu' is not one of placement.pools \(main\)"):
        pool_layout(pools, {"policy": ("gpu", 1)})


def test_pools_are_placed_per_node_or_refused_naming_the_pool():
    from rlhf_dist.config.layout import place_on_nodes

    pools = {"learn": PoolConfig(nodes=1, gpus_per_node=2), "gen": PoolConfig(nodes=1, gpus_per_node=4),
             "crit": PoolConfig(nodes=2, gpus_per_node=1)}
    layout = pool_layout(pools, {"policy": ("learn", 2), "rollout": ("gen", 4), "critic": ("crit", 2)})
    # The first node that fits `learn` (node 0) leaves no node for `gen`: the search takes node 1 instead.
    assert place_on_nodes(pools, layout, [4, 3, 1]) == {"learn": (1,), "gen": (0,), "crit": (1, 2)}
    with pytest.raises(ConfigError, match=r"^placement.pools.crit: 2 node\(s\) x 1 GPUs cannot be placed beside pool\(s\) learn, gen"):
        place_on_nodes(pools, layout, [4, 2])  # a pool's nodes are distinct: crit cannot put both on node 1
    with pytest.raises(ConfigError, match=r"^placement.pools.gen: needs 1 node\(s\) with 4 GPUs each, but the cluster has 0"):
        place_on_nodes(pools, layout, [3, 3, 3])
    unused = pool_layout(pools, {"policy": ("learn", 2)})
    assert place_on_nodes(pools, unused, [2]) == {"learn": (0,)}  # pools no role uses take nothing


def test_group_contract_is_checked():
    check_groups([3, 3, 7, 7, 1, 1], 2)
    with pytest.raises(ValueError, match="rows 2..3 mix prompts"):
        check_groups([3, 3, 7, 1, 1, 7], 2)
    with pytest.raises(ValueError, match="5 rows do not split into groups of 2"):
        check_groups([3, 3, 7, 7, 1], 2)


def test_pools_pinned_to_their_cores():
    from types import SimpleNamespace

    from rlhf_dist.dist import CORES_ENV, parse_cores
    from rlhf_dist.runtime.groups import cores_env

    assert parse_cores("0") == {0} and parse_cores("0, 2-4") == {0, 2, 3, 4}
    cluster = SimpleNamespace(device="cpu", cpu_cores={"learn": "0", "gen": "1"})
    assert cores_env(cluster, "gen") == {CORES_ENV: "1"}
    assert cores_env(cluster, "other") == {}  # a pool not listed is not pinned
    assert cores_env(SimpleNamespace(device="cuda", cpu_cores={"gen": "1"}), "gen") == {}


def test_nothing_is_compiled_on_cpu_unless_the_engine_compiles():
    """DeepSpeed's optimizer check and vLLM's sampler would otherwise compile at start-up (measured: about 1 s
    per learner and 2 s on the first generation); a compiled engine keeps its compiler."""
    from rlhf_dist.config import load_config
    from rlhf_dist.rollout.engine import engine_env
    from rlhf_dist.runtime.groups import worker_env

    from tests.conftest import demo_config_dict

    assert worker_env("cpu", 1)["TORCHDYNAMO_DISABLE"] == "1"
    assert "TORCHDYNAMO_DISABLE" not in worker_env("cuda", 1)
    d = demo_config_dict("/tmp/m", "/tmp/p.jsonl", "/tmp/run")
    assert engine_env(load_config(None, base=d))["TORCHDYNAMO_DISABLE"] == "1"
    d["rollout"]["enforce_eager"] = False
    assert engine_env(load_config(None, base=d))["TORCHDYNAMO_DISABLE"] == "0"


def test_engines_set_up_with_the_threads_they_generate_with():
    """Under threads per phase a lone single-worker engine generates on all the cores, and vLLM keeps the work
    split it was set up with: the engine process starts with that many threads. Otherwise, or with TP workers
    (other processes), threads_per_actor."""
    from types import SimpleNamespace

    from rlhf_dist.config import load_config
    from rlhf_dist.runtime.threads import engine_threads
    from rlhf_dist.trainers.rl_roles import role_specs

    from tests.conftest import demo_config_dict

    cluster = SimpleNamespace(device="cpu", phase_threads=True, phase_cores=8, threads_per_actor=1)
    assert engine_threads(cluster, engines=1, tensor_parallel_size=1) == 8
    assert engine_threads(cluster, engines=2, tensor_parallel_size=1) == 4
    assert engine_threads(cluster, engines=1, tensor_parallel_size=2) == 1
    assert engine_threads(SimpleNamespace(**{**vars(cluster), "device": "cuda"}), 1, 1) == 1  # GPU: no phase threads
    assert engine_threads(SimpleNamespace(device="cpu", phase_threads=False, phase_cores=8, threads_per_actor=3), 1, 1) == 3
    d = demo_config_dict("/tmp/m", "/tmp/p.jsonl", "/tmp/run")
    d["cluster"] = {"phase_cores": 6}
    specs = {s.name: s for s in role_specs(load_config(None, base=d))}
    assert specs["rollout"].env["OMP_NUM_THREADS"] == "3"  # two engines split the six cores


def test_auto_device_is_read_as_the_driver_sees_it():
    """"auto" gets the CPU workers' environment only where the driver sees no CUDA; "cuda" never does (even from
    a driver without GPUs, which steers a GPU cluster), and is not checked here."""
    import torch

    from rlhf_dist.dist import cpu_workers
    from rlhf_dist.runtime.groups import worker_env

    assert cpu_workers("cpu") and not cpu_workers("cuda")
    assert cpu_workers("auto") == (not torch.cuda.is_available())
    assert ("DS_ACCELERATOR" in worker_env("auto", 1)) == (not torch.cuda.is_available())


def test_hosts_share_a_bundle_only_where_the_process_group_matches():
    """placement.share_processes: one process per bundle for the hostable roles' ranks on it; a role whose
    process group spans other ranks than the pool's first, a role with its own environment and the engines
    keep their own processes; the host's GPU share is its members' together."""
    from rlhf_dist.runtime.hosts import plan_hosts

    pools = {"main": PoolConfig(nodes=1, gpus_per_node=2)}
    specs = [RoleSpec("policy", object, "main", 2, None, rendezvous=True, hostable=True),
             RoleSpec("critic", object, "main", 2, None, rendezvous=True, hostable=True),
             RoleSpec("reference", object, "main", 1, None, hostable=True),
             RoleSpec("rollout", object, "main", 1, None)]
    slots = plan_slots(specs, pool_layout(pools, role_gpus(specs)))
    hosts = plan_hosts(specs, slots)
    assert [(h.bundle, h.members) for h in hosts] == [(0, (("policy", 0), ("critic", 0), ("reference", 0))),
                                                      (1, (("policy", 1), ("critic", 1)))]
    assert [h.gpu_fraction for h in hosts] == [0.75, 0.5]  # four roles in the pool: a quarter of a GPU each

    one_rank_critic = [specs[0], dataclasses.replace(specs[1], ranks=1), specs[2], specs[3]]
    hosts = plan_hosts(one_rank_critic, plan_slots(one_rank_critic, pool_layout(pools, role_gpus(one_rank_critic))))
    assert [h.members for h in hosts] == [(("policy", 0), ("reference", 0)), (("policy", 1),)]
    own_env = [specs[0], specs[1], dataclasses.replace(specs[2], env={"X": "1"}), specs[3]]
    assert all("reference" not in dict(h.members) for h in plan_hosts(own_env, slots))
    assert plan_hosts([dataclasses.replace(s, hostable=False) for s in specs], slots) == []


def test_share_processes_keeps_zero3_roles_and_engines_apart(tmp_path):
    from rlhf_dist.config import load_config
    from rlhf_dist.trainers.rl_roles import role_specs
    from tests.conftest import demo_config_dict

    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"]["share_processes"] = True
    hostable = {s.name: s.hostable for s in role_specs(load_config(None, base=d))}
    assert hostable == {"policy": False, "critic": True, "reference": True, "rollout": False}  # the policy is ZeRO-3 here
    d["placement"]["share_processes"] = False
    assert not any(s.hostable for s in role_specs(load_config(None, base=d)))


def test_shards_cross_to_the_ranks_as_their_own_rows(ray_session):
    """split() sends each rank its rows as numpy arrays: Ray ships an array's own bytes, where a torch slice is
    pickled with its whole storage (every rank got the full batch). The ranks take back equal, writable tensors."""
    import pickle

    import torch

    from rlhf_dist.data.batch import from_wire, split

    batch = {"input_ids": torch.arange(256 * 64).reshape(256, 64), "mask": torch.rand(256, 16),
             "halves": torch.rand(256, 16).to(torch.bfloat16)}
    shards = split(batch, 4)
    assert [type(s["input_ids"]).__name__ for s in shards] == ["ndarray"] * 4
    assert isinstance(shards[0]["halves"], torch.Tensor)  # numpy has no bfloat16: sent as a tensor
    rows = 64 * 64 * 8
    assert len(pickle.dumps(shards[1]["input_ids"], protocol=5)) < 1.1 * rows
    assert len(pickle.dumps(batch["input_ids"][64:128], protocol=5)) > 3.9 * rows  # what a torch slice carried
    received = ray_session.get(ray_session.put(shards[1]))  # what an actor receives: read-only views of Ray's buffers
    assert not received["input_ids"].flags.writeable
    back = {k: from_wire(v) for k, v in received.items()}
    for k in batch:
        assert torch.equal(back[k], batch[k][64:128])
    back["input_ids"] += 1  # a copy the rank may change
    assert torch.equal(from_wire(received["input_ids"]), batch["input_ids"][64:128])
