"""The job-submission path: a local single-node Ray cluster on CPU (head with logical GPUs), a PPO job
submitted through launch/submit.sh and Ray's job API, run to completion."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from rlhf_dist.dist import free_port

from tests.conftest import demo_config_dict

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def test_submit_refuses_without_an_address(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run(["bash", "launch/submit.sh", "configs/demo_cpu.yaml"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "RAY_ADDRESS is not set" in out.stderr


def test_head_refuses_without_gpus_unless_allowed(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ALLOW_NO_GPU": "0"}
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the no-GPU refusal cannot be shown here")
    out = subprocess.run(["bash", "launch/ray_head.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "nvidia-smi not found" in out.stderr


@pytest.mark.slow
def test_job_submission_to_a_local_cluster(tiny_model, tmp_path):
    port, dash, client = free_port(), free_port(), free_port()
    # This machine may already run another Ray (the test session's): every port of the new head is chosen free.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                   f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    temp_dir = tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp")  # short: Ray's unix sockets have a path limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", "--num-gpus=2", "--num-cpus=2", f"--temp-dir={temp_dir}", *agent_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the local Ray head's job server did not come up in 90 s"
                time.sleep(1)
        cfg = demo_config_dict(tiny_model, str(ROOT / "configs/data/demo_prompts.jsonl"), str(tmp_path / "run"))
        cfg["run"]["steps"] = 1
        cfg["placement"]["rollout"]["num_engines"] = 1
        config = tmp_path / "job.yaml"
        config.write_text(yaml.safe_dump(cfg))
        out = subprocess.run(
            ["bash", "launch/submit.sh", str(config), "run.save_final=false"], cwd=ROOT, capture_output=True, text=True,
            env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}", "RLHF_PYTHON": sys.executable}, timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout + out.stderr
        assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
