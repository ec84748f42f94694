"""Asynchronous mode (rollout.max_staleness > 0) with real Ray, DeepSpeed and vLLM on CPU: engines on their own
pool run ahead of the learners; runs are reproducible; resume uses every prompt exactly as often."""
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

PROMPTS = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_prompts.jsonl")
# Everything a step computes from the data and the weights (timings and throughputs excluded).
COMPARED = ["reward/mean", "advantages/mean", "policy/loss", "policy/entropy", "policy/kl_loss", "mismatch/kl",
            "mismatch/ratio_outside_band_frac", "correction/clipped_frac", "rollout/staleness", "rollout/weights_version"]


def config(model_dir, out, *overrides, steps=3, log=None):
    d = demo_config_dict(model_dir, PROMPTS, out)
    d["run"]["steps"] = steps
    d["ppo"].update({"advantage_estimator": "grpo", "kl_loss_coef": 0.05, "is_correction": "token_tis"})
    d["rollout"]["max_staleness"] = 1
    d["placement"] = {
        "pools": {"learn": {"nodes": 1, "gpus_per_node": 1}, "gen": {"nodes": 1, "gpus_per_node": 1}},
        "policy": {"pool": "learn", "num_gpus": 1, "zero_stage": 2},
        "reference": {"pool": "learn", "num_gpus": 1},
        "rollout": {"pool": "gen", "num_engines": 1},
    }
    if log is not None:
        d["reward"]["functions"] = [{"name": "tests.helpers:counting_char_fraction", "kwargs": {"log": str(log)}}]
    d["checkpoint"] = {"every_n_steps": 2, "keep_last": 2}
    return load_config(None, list(overrides), base=d)


@pytest.mark.slow
def test_async_runs_are_reproducible_and_resume_uses_every_prompt_exactly_as_often(ray_session, tiny_model, tmp_path):
    """Two runs with the same seed are the same run (the first three steps of the 4-step run and the 3-step run
    stopped below), and a resumed run scores every prompt as often as an uninterrupted one."""
    from rlhf_dist.trainers.ppo import train

    full_log, split_log = tmp_path / "full.txt", tmp_path / "split.txt"
    train(config(tiny_model, str(tmp_path / "full"), steps=4, log=full_log))
    # A run whose checkpoint at step 2 was taken with the batch of step 3 in flight; it is then stopped before
    # its step-3 checkpoint (removed) and step 3's scoring is taken out of the count (its last 8 x 2 lines).
    first = train(config(tiny_model, str(tmp_path / "split"), log=split_log))
    a, b = read_metrics(tmp_path / "full")[:3], read_metrics(first)
    assert [r["rollout/weights_version"] for r in a] == [0, 0, 1]  # batch t generated with version t-2 (k = 1)
    assert [r["rollout/staleness"] for r in a] == [0, 1, 1]
    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            assert rb[key] == ra[key], (ra["step"], key)
    shutil.rmtree(first / "checkpoints" / "step_00000003")
    split_log.write_text("".join(split_log.read_text().splitlines(keepends=True)[: -8 * 2]))
    resumed = train(config(tiny_model, str(tmp_path / "split"), "resume=auto", steps=4, log=split_log))
    assert resumed == first and [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4]
    assert "resumed from" in (resumed / "train.log").read_text()
    full, split = Counter(full_log.read_text().splitlines()), Counter(split_log.read_text().splitlines())
    assert sum(full.values()) == 4 * 8 * 2  # steps x prompts x samples
    assert split == full

    # A dead engine in asynchronous mode: killed once the step-2 checkpoint is complete (a batch ahead in
    # flight), the run restarts every group and resumes from that checkpoint, equal to the run resumed above.
    killed: dict = {}
    out = tmp_path / "killed"
    killer = threading.Thread(target=kill_after_checkpoint, args=(out, "rollout", killed), daemon=True)
    killer.start()
    restarted = train(config(tiny_model, str(out), "fault_tolerance.max_restarts=1", steps=4))
    killer.join(timeout=5)
    assert "pid" in killed, "the test never found the engine to kill"
    log = (restarted / "train.log").read_text()
    assert re.search(r"worker died: rollout rank 0 (died|cannot be reached)", log), log[-3000:]
    assert "restart 1/1: restarting all actor groups, resuming from checkpoint step 2" in log
    rows = read_metrics(restarted)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # no trained step lost, none twice
    for ra, rb in zip(read_metrics(tmp_path / "full")[:2] + read_metrics(resumed)[2:], rows, strict=True):
        for key in COMPARED:
            assert rb[key] == ra[key], (ra["step"], key)


def kill_after_checkpoint(run_dir: Path, role: str, killed: dict) -> None:
    """SIGKILL `role` rank 0 of this run (its pid is in train.log) once the step-2 checkpoint is complete."""
    deadline = time.monotonic() + 600
    done = run_dir / "checkpoints" / "step_00000002" / "COMPLETE"
    while time.monotonic() < deadline:
        if done.is_file():
            match = re.search(rf"{role}: rank 0 pid (\d+)", (run_dir / "train.log").read_text())
            killed["pid"] = int(match.group(1))
            os.kill(killed["pid"], signal.SIGKILL)
            return
        time.sleep(0.05)
