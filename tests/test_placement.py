"""Placement on Ray logical GPUs: fitting layouts start with the right GPU sharing; others are refused early."""
import pytest

from rlhf_dist.config import ConfigError, derive, load_config
from rlhf_dist.runtime.groups import ActorGroup
from rlhf_dist.runtime.placement import create_pools, remove_pools
from rlhf_dist.trainers.rl_roles import role_slots, role_specs

from tests.conftest import LOGICAL_GPUS, demo_config_dict


class Probe:
    def __init__(self, role, rank, world_size):
        self.role, self.rank = role, rank

    def gpus(self):
        import ray

        return [str(g) for g in ray.get_gpu_ids()]

    def niceness(self):
        import os

        return os.nice(0)


def two_pool_config(tmp_path, learner_gpus=2, rollout_gpus=2):
    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"] = {
        "pools": {"learn": {"nodes": 1, "gpus_per_node": learner_gpus}, "gen": {"nodes": 1, "gpus_per_node": rollout_gpus}},
        "policy": {"pool": "learn", "num_gpus": 2, "zero_stage": 3},
        "critic": {"pool": "learn", "num_gpus": 2},
        "reference": {"pool": "learn", "num_gpus": 1},
        "rollout": {"pool": "gen", "num_engines": 2},
    }
    return load_config(None, base=d)


def test_two_pools_get_separate_gpus_and_colocated_roles_share(ray_session, tmp_path):
    ray = ray_session
    cfg = two_pool_config(tmp_path)
    derived = derive(cfg)
    pools = create_pools(cfg.placement.pools, derived.layout, cfg.run.name, timeout_s=30)
    try:
        slots = role_slots(cfg, derived)
        # Three roles share pool 'learn': each actor takes a third of a GPU.
        assert [s.gpu_fraction for s in slots["policy"]] == pytest.approx([1 / 3, 1 / 3])
        assert [s.gpu_fraction for s in slots["rollout"]] == [1.0, 1.0]
        gpus = {}
        for role in ("policy", "critic", "reference", "rollout"):
            group = ActorGroup(role, Probe, slots[role], pools, (role,), env={})
            gpus[role] = [tuple(g) for g in group.call("gpus", timeout_s=60)]
            group.kill()
        learner_gpus = set(gpus["policy"])
        assert len(learner_gpus) == 2  # two ranks, two different GPUs
        assert set(gpus["critic"]) == learner_gpus  # colocated: the same two GPUs
        assert set(gpus["reference"]) <= learner_gpus
        assert len(set(gpus["rollout"])) == 2 and not set(gpus["rollout"]) & learner_gpus
    finally:
        remove_pools(pools)


def test_roles_that_yield_the_cpu_start_behind_the_engines(ray_session, tmp_path):
    """On CPU the learner-side roles run niced behind the engines (measured: the demo's engine then finishes its
    start with the learners instead of seconds after them); as the process sees itself, not as we set it."""
    from rlhf_dist.runtime.groups import YIELD_NICE

    cfg = two_pool_config(tmp_path)
    derived = derive(cfg)
    specs = {s.name: s for s in role_specs(cfg)}
    assert [n for n, s in specs.items() if s.yields_cpu] == ["policy", "critic", "reference"]
    pools = create_pools(cfg.placement.pools, derived.layout, cfg.run.name, timeout_s=30)
    try:
        slots = role_slots(cfg, derived)
        engine = ActorGroup("rollout", Probe, slots["rollout"], pools, ("rollout",), env={})
        learner = ActorGroup("policy", Probe, slots["policy"], pools, ("policy",), env={}, nice=YIELD_NICE)
        plain = engine.call("niceness", timeout_s=60)
        niced = learner.call("niceness", timeout_s=60)
        engine.kill()
        learner.kill()
        base = plain[0]  # Ray's own worker niceness
        assert set(plain) == {base} and set(niced) == {min(19, base + YIELD_NICE)} and niced[0] > base
    finally:
        remove_pools(pools)


def test_layout_too_big_is_refused_before_any_actor(ray_session, tmp_path):
    from ray.util import placement_group_table

    from rlhf_dist.trainers.rl_roles import RLRoles

    cfg = two_pool_config(tmp_path, learner_gpus=2, rollout_gpus=LOGICAL_GPUS)
    before = len(placement_group_table())
    with pytest.raises(ConfigError) as e:
        RLRoles(cfg)
    assert str(e.value) == (
        f"placement.pools.gen: needs {LOGICAL_GPUS} GPUs but the cluster has {LOGICAL_GPUS}, "
        "2 of them taken by the pools before it; short by 2"
    )
    assert len(placement_group_table()) == before


def test_pool_wider_than_any_node_is_refused(ray_session, tmp_path):
    from rlhf_dist.runtime.placement import check_cluster_fits

    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"]["pools"]["main"] = {"nodes": 2, "gpus_per_node": 2}
    cfg = load_config(None, base=d)
    nodes = [{"Alive": True, "Resources": {"GPU": 1}} for _ in range(4)]
    with pytest.raises(ConfigError, match=r"placement.pools.main.gpus_per_node: 2 GPUs per node, but the largest node"):
        check_cluster_fits(cfg.placement.pools, derive(cfg).layout, {"GPU": 4}, nodes)


def test_wait_names_the_stuck_rank(ray_session):
    import time

    from rlhf_dist.errors import WaitTimeout, wait_all

    @ray_session.remote(num_cpus=0)
    def work(seconds):
        time.sleep(seconds)
        return seconds

    refs = [work.remote(0), work.remote(30)]
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"waiting for policy.train: no answer from policy rank 1"):
        wait_all(refs, ["policy rank 0", "policy rank 1"], "policy.train", timeout_s=2)
    assert time.monotonic() - t0 < 10
    ray_session.cancel(refs[1], force=True)
