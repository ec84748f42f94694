"""A worker's failure names the phase it was in and keeps its traceback: one line on the console, the worker's
file and line in the run's train.log (and on stderr with --verbose)."""
import subprocess
import sys

import pytest
import yaml

from rlhf_dist.errors import WorkerFailed, phase, wait_all


class _Starts:
    def setup(self):
        with phase("model load"):
            pass
        with phase("engine warm-up generation"):
            self._generate()

    def _generate(self):
        raise RuntimeError("CPU Generator does not use offset\nsecond line of the message")


def test_error_names_the_phase_that_raised_and_keeps_the_worker_traceback(ray_session):
    actor = ray_session.remote(num_cpus=0)(_Starts).remote()
    try:
        with pytest.raises(WorkerFailed) as e:
            wait_all([actor.setup.remote()], ["rollout rank 0"], "start-up", timeout_s=60)
    finally:
        ray_session.kill(actor)
    msg = str(e.value)
    assert msg == ("rollout rank 0 failed during engine warm-up generation (in start-up): "
                   "RuntimeError: CPU Generator does not use offset"), msg
    details = e.value.details
    assert "test_worker_errors.py" in details and "in _generate" in details, details
    assert details.startswith("rollout rank 0, engine warm-up generation (in start-up), raised in the worker:")


def _failing_run(tiny_model, tmp_path, *extra):
    from tests.conftest import demo_config_dict

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "the {w} cat"}}\n' for w in ["red", "big", "old", "sad"]))
    d = demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))
    d["reward"]["functions"] = [{"name": "tests.helpers:raises"}]
    d["ppo"].update(advantage_estimator="grpo", rollout_batch_size=4, mini_batch_size=8, micro_batch_size=4)
    d["placement"].update(critic=None, policy={"pool": "main", "num_gpus": 1, "zero_stage": 0},
                          rollout={"pool": "main", "num_engines": 1})
    d["run"].update(steps=1, tensorboard=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    return subprocess.run([sys.executable, "-m", "rlhf_dist", "train", str(cfg), *extra],
                          capture_output=True, text=True, timeout=540)


@pytest.mark.slow
def test_failed_run_prints_one_line_and_writes_the_traceback_to_train_log(tiny_model, tmp_path):
    out = _failing_run(tiny_model, tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    log = tmp_path / "run" / "train.log"
    last = out.stderr.strip().splitlines()[-1]
    assert last == ("rlhf-dist: RewardError: reward function tests.helpers:raises failed on sample 0 after "
                    "1 attempt(s): ValueError: no score for this response (a second line that the console must "
                    f"not show) (8 samples failed) (traceback in {log})"), last
    assert "Traceback" not in out.stderr
    text = log.read_text()
    # The reward function's own frames, from its worker process, then the driver's.
    assert 'helpers.py", line' in text and "in _score_or_fail" in text, text[-3000:]
    assert "Traceback (most recent call last)" in text
    assert "error: RewardError: reward function tests.helpers:raises" in text


@pytest.mark.slow
def test_verbose_shows_the_traceback_on_stderr(tiny_model, tmp_path):
    out = _failing_run(tiny_model, tmp_path, "--verbose")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "in _score_or_fail" in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("rlhf-dist: RewardError: reward function tests.helpers:raises")
