"""The launch scripts' own refusals, before any Ray process starts: no address, no GPUs, no token, a token file
others can read, authentication switched off. The scripts starting a cluster and a job: tests/test_multinode.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_cluster import clean_env

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, **env):
    return subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True,
                          timeout=60)


def test_submit_refuses_without_an_address(tmp_path):
    out = run("submit.sh", "configs/demo_cpu.yaml", RAY_ADDRESS="")
    assert out.returncode == 1 and "RAY_ADDRESS is not set" in out.stderr


def test_head_refuses_without_gpus_unless_allowed(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the no-GPU refusal cannot be shown here")
    out = run("ray_head.sh", ALLOW_NO_GPU="0", PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert out.returncode == 1 and "nvidia-smi not found" in out.stderr


@pytest.mark.parametrize("script,args", [("ray_worker.sh", ["127.0.0.1:1"]), ("submit.sh", ["configs/demo_cpu.yaml"])])
def test_workers_and_clients_refuse_without_the_token(script, args, tmp_path):
    env = {"ALLOW_NO_GPU": "1", "RAY_ADDRESS": "http://127.0.0.1:1", "HOME": str(tmp_path)}  # no ~/.ray/auth_token
    out = run(script, *args, **env)
    assert out.returncode == 1 and "no Ray token: set RAY_AUTH_TOKEN_PATH" in out.stderr, out.stderr
    token = tmp_path / "token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    out = run(script, *args, RAY_AUTH_TOKEN_PATH=str(token), **env)
    assert out.returncode == 1 and f"Ray token file {token} has mode 644: other users can read it" in out.stderr
    out = run(script, *args, RAY_AUTH_MODE="disabled", **env)
    assert out.returncode == 1 and "RAY_AUTH_MODE=disabled: these scripts run Ray with token authentication only" in out.stderr


def test_head_takes_a_token_file_it_did_not_make_only_when_private(tmp_path):
    token = tmp_path / "token"
    token.write_text("0" * 64)
    token.chmod(0o640)
    out = run("ray_head.sh", ALLOW_NO_GPU="1", RAY_HEAD_IP="127.0.0.1", RAY_AUTH_TOKEN_PATH=str(token))
    assert out.returncode == 1 and "has mode 640: other users can read it" in out.stderr
    assert token.read_text() == "0" * 64  # a user's file is never replaced


def test_slurm_script_passes_the_token_in_the_environment_only():
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    commands = [line for line in text.splitlines() if line.lstrip().startswith(("srun", "ray", "python"))]
    assert commands and all("TOKEN" not in line for line in commands)
    assert all("--export=ALL" in line for line in commands if line.lstrip().startswith("srun --") and "launch/" in line)
    assert "export RAY_AUTH_TOKEN" in text and "RAY_AUTH_MODE" not in "".join(commands)
