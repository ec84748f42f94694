"""CPU threads per phase: the actors of a phase split the cores; only changed shares are sent."""
import torch

from rlhf_dist.runtime.threads import PhaseThreads, node_cores, share


def test_share_splits_cores_and_never_drops_below_one():
    assert share(16, 1) == 16  # a phase alone gets every core
    assert share(16, 3) == 5
    assert share(2, 5) == 1
    assert share(2, 0) == 2
    assert 1 <= node_cores()


class Group:
    """Stands in for an ActorGroup: our own runtime class, not Ray; records what it was asked."""

    def __init__(self, role, n, processes=None):
        self.role, self.actors, self.asked = role, [None] * n, []
        self.processes = processes or [(role, r) for r in range(n)]

    def __len__(self):
        return len(self.actors)

    def submit(self, method, n, ranks):
        self.asked.append((method, n, tuple(ranks)))
        return [n], [self.role]


class Waiter:
    def wait(self, submitted, what):
        return [x for refs, _ in submitted for x in refs]


def test_phase_threads_sends_only_changed_shares():
    policy, critic, engine = Group("policy", 2), Group("critic", 2), Group("rollout", 1)
    t = PhaseThreads(Waiter(), enabled=True, cores=8)
    t.phase(engine)
    t.phase(policy, critic, None)
    t.phase(engine)  # unchanged: nothing sent
    t.phase(policy)  # alone now: all 8 cores over 2 ranks
    assert engine.asked == [("set_threads", 8, (0,))]
    assert policy.asked == [("set_threads", 2, (0, 1)), ("set_threads", 4, (0, 1))]
    assert critic.asked == [("set_threads", 2, (0, 1))]
    off = PhaseThreads(Waiter(), enabled=False, cores=8)
    off.phase(engine)
    assert engine.asked == [("set_threads", 8, (0,))]


def test_roles_sharing_processes_count_once_and_share_threads():
    """placement.share_processes: policy and critic rank r (and the reference on rank 0) in one process. A
    phase splits the cores over processes, not ranks; a share set through one role holds for the others, and a
    share changed through another role is sent again."""
    hosts = [("host", "main", 0), ("host", "main", 1)]
    policy, critic, ref = Group("policy", 2, hosts), Group("critic", 2, hosts), Group("reference", 1, hosts[:1])
    t = PhaseThreads(Waiter(), enabled=True, cores=8)
    t.phase(policy, critic)  # 2 processes: 4 threads each, set once per process
    assert policy.asked == [("set_threads", 4, (0, 1))] and critic.asked == []
    t.phase(ref)  # the reference alone: its process (policy and critic rank 0's too) gets all 8
    assert ref.asked == [("set_threads", 8, (0,))]
    t.phase(policy)  # rank 0's process was changed through the reference: sent again, rank 1's was not
    assert policy.asked[1:] == [("set_threads", 4, (0,))]


def test_worker_applies_its_share(tiny_model, tmp_path):
    from rlhf_dist.config import load_config
    from rlhf_dist.learner.frozen import ReferenceWorker
    from rlhf_dist.trainers.rl_roles import reference_spec
    from tests.conftest import demo_config_dict

    cfg = load_config(None, base=demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "r")))
    before = torch.get_num_threads()
    try:
        worker = ReferenceWorker(reference_spec(cfg), rank=0, world_size=1)
        assert worker.set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
