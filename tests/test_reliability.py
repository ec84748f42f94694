"""Checkpoint/resume equivalence and surviving a killed worker, with real Ray, DeepSpeed and vLLM on CPU."""
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

PROMPTS = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_prompts.jsonl")
COMPARED = ["reward/mean", "kl/mean", "advantages/mean", "returns/mean", "policy/loss", "policy/entropy", "critic/loss",
            "policy/lr", "critic/lr"]
# Warmup over the first PPO step, then cosine decay over 4 steps (the length of the uninterrupted run, also in
# the split run's first 2-step leg): the resumed run must continue the schedule, not restart it.
SCHEDULE = "ppo.lr_schedule={kind: cosine, warmup_steps: 1, min_ratio: 0.1, total_steps: 4}"


def config(model_dir, out, *overrides, steps=4):
    d = demo_config_dict(model_dir, PROMPTS, out)
    d["run"]["steps"] = steps
    d["placement"]["rollout"]["num_engines"] = 1
    d["placement"]["policy"]["zero_stage"] = 2  # optimizer states partitioned across the two ranks
    d["checkpoint"] = {"every_n_steps": 2, "keep_last": 2}
    return load_config(None, list(overrides), base=d)


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="resume=auto: no complete checkpoint under"):
        from rlhf_dist.checkpoint import find_resume

        find_resume(config(str(tmp_path / "m"), str(tmp_path / "run"), "resume=auto"))


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.ppo import train

    full = read_metrics(train(config(tiny_model, str(tmp_path / "full"), SCHEDULE)))
    lrs = [r["policy/lr"] for r in full]
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[3], lrs  # warmup, then decay
    first = train(config(tiny_model, str(tmp_path / "split"), SCHEDULE, steps=2))
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step_00000002"]
    # Links planted where the resumed run writes whole files: replaced, and the user's file left as it was.
    mine = tmp_path / "users-file.txt"
    mine.write_text("the user's own file\n")
    (first / "final").mkdir(exist_ok=True)
    for planted in (first / "final" / "config.json", first / "final" / "tokenizer.json", first / "config.resume-step2.yaml"):
        planted.unlink(missing_ok=True)
        planted.symlink_to(mine)
    resumed_dir = train(config(tiny_model, str(tmp_path / "split"), SCHEDULE, "resume=auto"))
    assert mine.read_text() == "the user's own file\n"
    assert not any(p.is_symlink() for p in [*(first / "final").iterdir(), first / "config.resume-step2.yaml"])
    assert resumed_dir == first  # the same run continues
    resumed = read_metrics(resumed_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert "resumed from" in (resumed_dir / "train.log").read_text()
    assert (resumed_dir / "config.resume-step2.yaml").is_file()


def kill_a_policy_worker_after(run_dir: Path, rows: int, killed: dict) -> None:
    """Once `rows` steps are logged, SIGKILL policy rank 1 of this run (its pid is in the run's train.log)."""
    deadline = time.monotonic() + 300
    metrics, log = run_dir / "metrics.jsonl", run_dir / "train.log"
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            match = re.search(r"policy: .*rank 1 pid (\d+)", log.read_text())
            killed["pid"] = int(match.group(1))
            os.kill(killed["pid"], signal.SIGKILL)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_worker_is_reported_and_the_run_restarts_from_checkpoint(ray_session, tiny_model, tmp_path):
    from rlhf_dist.trainers.ppo import train

    out = tmp_path / "ft"
    # 16 samples x 50 ms of reward per step leaves seconds between step 3 and the end of the run.
    cfg = config(
        tiny_model, str(out), "fault_tolerance.max_restarts=1",
        "reward.functions=[{name: 'tests.helpers:slow_char_fraction'}]", steps=7,
    )
    killed: dict = {}
    killer = threading.Thread(target=kill_a_policy_worker_after, args=(out, 3, killed), daemon=True)
    killer.start()
    run_dir = train(cfg)
    killer.join(timeout=5)
    assert "pid" in killed, "the test never found a policy worker to kill"
    log = (run_dir / "train.log").read_text()
    assert "worker died: policy rank 1 died during" in log
    assert "restart 1/1: restarting all actor groups, resuming from checkpoint step" in log
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 8))
    assert (run_dir / "final" / "model.safetensors").is_file()
