"""A peer that never joins ends in a clear error within the configured timeout, never a hang."""
import time

import pytest

from rlhf_dist.dist import free_port
from rlhf_dist.errors import WaitTimeout
from rlhf_dist.sync.group import SyncGroup


def test_sync_rendezvous_without_peers_times_out_with_a_named_error():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        SyncGroup("127.0.0.1", free_port(), rank=0, world_size=3, backend="gloo", timeout_s=2)
    elapsed = time.monotonic() - t0
    assert elapsed < 15, elapsed
    assert "weight-sync rendezvous: rank 0 of 3 (gloo, 127.0.0.1:" in str(e.value)
    assert "timeouts.rendezvous_s=2" in str(e.value)


def test_engine_side_never_finding_the_learner_times_out():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"rank 1 of 2 .* waiting for the other ranks"):
        SyncGroup("127.0.0.1", free_port(), rank=1, world_size=2, backend="gloo", timeout_s=2)
    assert time.monotonic() - t0 < 15


def test_learner_peer_never_joining_deepspeed_rendezvous(ray_session, tmp_path):
    """Only rank 0 of a 2-rank policy group is started: its rendezvous must fail within rendezvous_s, and the
    controller's wait names the role and rank."""
    from rlhf_dist.config import load_config
    from rlhf_dist.errors import wait_all
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.trainers.rl_roles import learner_spec

    from tests.conftest import demo_config_dict

    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["timeouts"]["rendezvous_s"] = 3
    cfg = load_config(None, base=d)
    actor = ray_session.remote(num_cpus=0)(PolicyWorker).remote(learner_spec(cfg, "policy"), 0, 2)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"policy rank 0: DeepSpeed rendezvous \(rank 0 of 2\) at 127.0.0.1:\d+ gave up"):
        wait_all([actor.setup.remote("127.0.0.1", free_port())], ["policy rank 0"], "DeepSpeed rendezvous", timeout_s=60)
    assert time.monotonic() - t0 < 40
    ray_session.kill(actor)
