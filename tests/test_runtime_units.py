"""Pure parts of the role runtime and the config's single sources of truth, without Ray."""
import typing

import pytest

from rlhf_dist.algorithms.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rlhf_dist.config import PoolConfig, PPOConfig
from rlhf_dist.data.batch import check_groups
from rlhf_dist.errors import ConfigError
from rlhf_dist.layout import pool_layout
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
