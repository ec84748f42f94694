"""An engine asked to generate with weights older than the last synced version refuses, with a named error."""
import pytest

from rlhf_dist.config import load_config
from rlhf_dist.errors import WeightSyncError, wait_all
from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec

from tests.conftest import demo_config_dict


@pytest.mark.slow
def test_generate_refuses_weights_of_another_version(ray_session, tiny_model, tmp_path):
    cfg = load_config(None, base=demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run")))
    engine = ray_session.remote(num_cpus=0)(RolloutEngine).options(runtime_env={"env_vars": engine_env(cfg)}).remote(engine_spec(cfg), 0, 1)
    try:
        wait_all([engine.setup.remote()], ["rollout rank 0"], "engine start", 300)
        out = wait_all([engine.generate.remote([[5, 6, 7]], 0)], ["rollout rank 0"], "generate", 120)[0]
        assert len(out["responses"]) == 1  # no version asked: generates
        # No weights were ever received (version -1); the controller believes version 3 was synced.
        with pytest.raises(WeightSyncError, match=r"rollout rank 0: engine workers hold weights \[-1\], but version 3 was synced"):
            wait_all([engine.generate.remote([[5, 6, 7]], 0, 3)], ["rollout rank 0"], "generate", 120)
    finally:
        ray_session.kill(engine)
