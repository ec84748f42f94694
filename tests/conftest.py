"""Shared fixtures: one Ray session with 4 logical GPUs for the whole run (started as the CLI starts it), and a
tiny model made locally."""
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOGICAL_GPUS = 4


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from rlhf_dist.ray_start import start_local_ray

    # ray.init costs about 4 s and shutdown 1.5 s: start it once. Logical GPUs let placement run on CPU.
    # The same start-up as the CLI's: loopback only, token authentication.
    start_local_ray(num_gpus=LOGICAL_GPUS, num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from rlhf_dist.data.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama"))


def demo_config_dict(model_dir: str, prompts: str, out_dir: str) -> dict:
    """A small PPO config used by the integration tests (edited per test)."""
    return {
        "run": {"name": "test", "output_dir": out_dir, "seed": 3, "steps": 2, "progress_bar": False},
        "model": {"policy": model_dir},
        "data": {"prompts": prompts, "max_prompt_tokens": 32},
        "rollout": {"max_new_tokens": 12, "n_samples_per_prompt": 2},
        "reward": {"functions": [{"name": "rlhf_dist.rewards.rules:char_fraction"}]},
        "ppo": {"rollout_batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4, "epochs": 1, "policy_lr": 1e-3,
                # The KL metric needs the reference (no KL term uses it here); the lean path has its own tests.
                "log_kl": True},
        "placement": {
            "pools": {"main": {"nodes": 1, "gpus_per_node": 2}},
            "policy": {"pool": "main", "num_gpus": 2, "zero_stage": 3},
            "critic": {"pool": "main", "num_gpus": 2, "zero_stage": 2},
            "reference": {"pool": "main", "num_gpus": 1},
            "rollout": {"pool": "main", "num_engines": 2},
        },
        "sync": {"bucket_mb": 0.25, "verify_every": 1},
        "timeouts": {"actor_start_s": 300, "rendezvous_s": 120, "call_s": 300},
    }
