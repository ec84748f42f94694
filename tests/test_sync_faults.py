"""Weight sync proves what the engines hold, with real vLLM, in asynchronous mode (engines a step ahead on a
pool of their own): an engine whose loader drops a tensor (takes it from the stream, never writes it) fails the
sync by name; an engine that loads a corrupted tensor (the bytes on the wire being right) stops the run at the
next sync, by the weight probe (`sync.max_logprob_diff`); a bucket whose bytes change on the wire fails a
verified sync."""
import dataclasses
import json
import re
import sys

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.data.tiny import WORDS
from rlhf_dist.errors import WeightSyncError
from rlhf_dist.rollout.engine import RolloutEngine

from tests.conftest import demo_config_dict


def _install_fault(worker, mode: str, name: str):
    """Runs inside a vLLM worker: wrap the receiver's load (either path, sync.engine_load) so that it skips or
    corrupts one tensor on its way to the engine's loader; or ("wire") change a received bucket's bytes before
    the receiver sees them, as a faulty transport would."""
    receiver = worker.rlhf_version.__self__  # the vLLM worker (`worker` may be the wrapper that forwards to it)
    real = getattr(receiver, "_real_rlhf_load", None) or receiver._rlhf_load
    receiver._real_rlhf_load = real
    group = receiver._rlhf_sync
    group.__dict__.pop("start_broadcast", None)  # the group's own method again
    if mode == "wire":
        received = group.start_broadcast

        class Changed:
            def __init__(self, flat):
                self.flat, self.work = flat, received(flat)

            def wait(self):
                self.work.wait()
                self.flat[-1] += 1.0  # the last value of every bucket

        group.start_broadcast = Changed
        receiver._rlhf_load = real
        return True

    def faulty(weights):
        def stream():
            for n, t in weights:
                if n == name and mode == "skip":
                    continue  # dropped: taken from the stream, never handed to the loader
                yield (n, t + 1.0) if n == name and mode == "corrupt" else (n, t)

        return real(stream())

    receiver._rlhf_load = faulty
    return True


class FaultyEngine(RolloutEngine):
    """The framework's engine, plus a way to make its loader misbehave."""

    def set_fault(self, mode: str, name: str) -> list:
        return self.llm.collective_rpc(_install_fault, args=(mode, name))


@pytest.fixture(scope="module", params=["auto", "vllm_reload"])
def faulty_roles(request, ray_session, tiny_model, tmp_path_factory):
    import ray

    from rlhf_dist.trainers.rl_roles import RLRoles, role_specs

    # The engine class and its fault travel by value: the workers import rlhf_dist, not the tests.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "p.jsonl").write_text("".join(json.dumps({"prompt": f"the cat {w} and the dog"}) + "\n" for w in WORDS[:16]))
    d = demo_config_dict(tiny_model, str(tmp / "p.jsonl"), str(tmp / "run"))
    # Asynchronous: the engines on a pool of their own, a step ahead of the learners.
    d["placement"]["pools"] = {"main": {"nodes": 1, "gpus_per_node": 2}, "gen": {"nodes": 1, "gpus_per_node": 2}}
    d["placement"]["rollout"]["pool"] = "gen"
    d["run"]["steps"] = 8
    d["rollout"]["max_staleness"] = 1
    # Both ways an engine loads (the lean CPU reload, and vLLM's reload_weights that GPU engines run); the probe's
    # limit is the default for the model's dtype (fp32: 1e-3).
    d["sync"] = {"bucket_mb": 0.05, "engine_load": request.param}
    cfg = load_config(None, base=d)
    specs = [dataclasses.replace(s, worker=FaultyEngine) if s.name == "rollout" else s for s in role_specs(cfg)]
    roles = RLRoles(cfg, specs=specs)
    yield cfg, roles, tmp
    roles.shutdown()


@pytest.mark.slow
def test_a_tensor_the_loader_skips_fails_the_sync_by_name(faulty_roles):
    cfg, roles, _ = faulty_roles
    lean = cfg.sync.engine_load == "auto"
    assert roles.sync.engine_load == (["rlhf_dist.sync.cpu_reload"] if lean else
                                      ["vLLM's reload_weights (sync.engine_load is vllm_reload)"])
    roles.sync_weights(0, verify=True)  # a healthy engine: the sync passes
    names = roles.sync.names
    roles.rollout.call("set_fault", "skip", names[-1], timeout_s=60)
    assert names[-1] == "lm_head.weight"  # the same name in the engine (not fused, not renamed)
    with pytest.raises(WeightSyncError, match=rf"rollout engine 0 worker 0: vLLM's loader took {len(names)} of the "
                                              rf"policy's {len(names)} tensors; engine parameters it did not write: "
                                              rf"lm_head.weight$"):
        roles.sync_weights(1, verify=True)


@pytest.mark.slow
def test_a_skipped_tensor_of_a_packed_layer_fails_the_sync_by_name(faulty_roles):
    """On CPU vLLM drops a linear layer's weight once packed: the lean path gives it back and must see it written."""
    _, roles, _ = faulty_roles
    name = "model.layers.1.mlp.down_proj.weight"
    roles.rollout.call("set_fault", "skip", name, timeout_s=60)
    with pytest.raises(WeightSyncError, match=rf"engine parameters it did not write: {name}$"):
        roles.sync_weights(1, verify=True)


@pytest.mark.slow
def test_a_corrupted_tensor_in_the_engine_stops_the_run(faulty_roles):
    from rlhf_dist.data.prompts import load_prompts
    from rlhf_dist.preflight import prepare_model
    from rlhf_dist.rewards.functions import RuleRewards
    from rlhf_dist.trainers.ppo import LoopState, rl_step

    cfg, roles, _ = faulty_roles
    assert cfg.rollout.max_staleness == 1
    tokenizer = prepare_model(cfg, print)
    prompts = load_prompts(cfg.data, tokenizer)
    state = LoopState(cfg, prompts.ids, prompts.texts, prompts.labels, tokenizer, RuleRewards(cfg.reward.functions), roles)
    roles.rollout.call("set_fault", "none", "", timeout_s=60)  # the earlier tests' faults mended
    try:
        healthy = roles.sync_weights(2, verify=True)  # the probe passes on healthy engines
        assert 0.0 <= healthy["sync/probe_logprob_diff_max"] < 1e-3
        m = rl_step(cfg, roles, state, 3)  # generation for step 4 starts with these weights, a step ahead
        assert m["sync/verified"] is True and m["sync/probe_logprob_diff_max"] < 1e-3
        roles.rollout.call("set_fault", "corrupt", "model.layers.1.mlp.down_proj.weight", timeout_s=60)
        # The wire is fine (checksums equal, every tensor loaded), but the engine computes with other weights: the
        # next sync (the end of step 4) stops the run.
        with pytest.raises(WeightSyncError, match=r"weight sync v4: rollout engine 0 scores the probe set up to \S+ away from "
                                                  r"the policy's log-probs .* more than sync.max_logprob_diff=0.001"):
            rl_step(cfg, roles, state, 4)
    finally:
        state.source.close()


@pytest.mark.slow
def test_bytes_changed_on_the_wire_fail_a_verified_sync_by_bucket(faulty_roles):
    """The engine checksums each bucket as received, before its loader reads it: a bucket whose bytes differ from
    what the policy sent fails the sync, naming the bucket and its tensors."""
    _, roles, _ = faulty_roles
    roles.rollout.call("set_fault", "wire", "", timeout_s=60)
    try:
        first = roles.sync.buckets[0].names
        said = f"rollout engine 0 worker 0 received different bytes than the policy sent in bucket 0 ({first[0]} .. {first[-1]})"
        with pytest.raises(WeightSyncError, match=re.escape(said)):
            roles.sync_weights(5, verify=True)
    finally:
        roles.rollout.call("set_fault", "none", "", timeout_s=60)
    roles.sync_weights(6, verify=True)  # the transport mended: verified again
