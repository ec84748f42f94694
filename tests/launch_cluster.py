"""A Ray cluster of several nodes on this machine, started by the launch scripts as a user starts one: the head
with launch/ray_head.sh (which makes the token), each worker with launch/ray_worker.sh (which takes it), every
node on loopback with its own logical GPUs. Used by tests/test_multinode.py."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlhf_dist.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clean_env(**extra) -> dict:
    """This process's environment without its own Ray session's settings (a test session's local Ray sets token
    variables and single-machine mode, which would forbid worker nodes), with the venv's `ray` on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["GLOO_SOCKET_IFNAME"] = "lo"  # the job's process groups stay on loopback
    return {**env, **extra}


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies awaiting their parent do not count)."""
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def node_ports() -> list[str]:
    """Every port a node opens, chosen free (this machine may already run other Ray clusters)."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


def request(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a request to the dashboard, with the token as a bearer header when given."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@dataclasses.dataclass
class LocalCluster:
    dir: Path
    token_path: Path
    gcs: str
    dashboard: str
    processes: dict = dataclasses.field(default_factory=dict)  # name -> Popen of its `ray start --block`

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def env(self, **extra) -> dict:
        return clean_env(**{"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), **extra})

    def nodes(self) -> list[dict]:
        status, body = request(f"{self.dashboard}/api/v0/nodes?limit=100&detail=1", self.token)
        assert status == 200, body[:500]
        return json.loads(body)["data"]["result"]["result"]

    def alive(self) -> dict[str, dict]:
        """node name (its `node_<name>` resource) -> the live node's state."""
        out = {}
        for n in self.nodes():
            names = [k[5:] for k in n.get("resources_total", {}) if k.startswith("node_") and not k.startswith("node:")]
            if n["state"] == "ALIVE" and names:
                out[names[0]] = n
        return out

    def add_worker(self, name: str, gpus: int, deadline_s: float | None = 120) -> str | None:
        """Start a worker node with launch/ray_worker.sh; returns its node id once the head lists it alive (with
        deadline_s None: at once, wait_node later)."""
        args = ["bash", "launch/ray_worker.sh", self.gcs, "--block", "--node-ip-address=127.0.0.1", f"--num-gpus={gpus}",
                "--num-cpus=2", f"--resources={json.dumps({'node_' + name: 1})}", *node_ports(),
                # A node's own temporary directory: nodes of one machine sharing one would share its runtime-env
                # files (the job's working directory), which each node's agent deletes when it is done with them.
                f"--temp-dir={self.dir / name}"]
        log = open(self.dir / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(args, cwd=ROOT, env=self.env(ALLOW_NO_GPU="1"), stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        return None if deadline_s is None else self.wait_node(name, deadline_s)

    def wait_node(self, name: str, deadline_s: float) -> str:
        deadline = time.monotonic() + deadline_s
        while True:
            node = self.alive().get(name)
            if node is not None:
                return node["node_id"]
            p = self.processes[name]
            assert p.poll() is None, f"node {name} exited: {(self.dir / f'{name}.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"node {name} not alive after {deadline_s} s"
            time.sleep(0.5)

    def stop(self, name: str, sig: int = signal.SIGTERM, deadline_s: float = 5) -> None:
        """Stop a node: `sig` to its whole process group (the script, `ray start`, the raylet, its workers), then
        SIGKILL to whatever is left after `deadline_s`."""
        p = self.processes.pop(name)
        kill_group(p.pid, sig)
        deadline = time.monotonic() + deadline_s
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_group(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

    def shutdown(self) -> None:
        for name in [n for n in self.processes if n != "head"] + ["head"]:
            if name in self.processes:
                self.stop(name)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(head_gpus: int, deadline_s: float = 120) -> LocalCluster:
    """The head (launch/ray_head.sh, which makes the token file) with its dashboard and job API on loopback."""
    # Short: Ray's unix sockets have a path length limit.
    d = Path(tempfile.mkdtemp(prefix="rlhf-nodes-", dir="/tmp"))
    port, dash = free_port(), free_port()
    c = LocalCluster(d, d / "token", f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")
    args = ["bash", "launch/ray_head.sh", "--port", str(port), "--dashboard-port", str(dash), "--block",
            "--include-dashboard=true", f"--ray-client-server-port={free_port()}", f"--num-gpus={head_gpus}", "--num-cpus=2",
            f"--temp-dir={d / 'ray'}", f"--resources={json.dumps({'node_head': 1})}", *node_ports()]
    log = open(d / "head.log", "w")
    c.processes["head"] = subprocess.Popen(args, cwd=ROOT, env=c.env(ALLOW_NO_GPU="1", RAY_HEAD_IP="127.0.0.1"),
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + deadline_s
    try:
        while True:  # a public endpoint: answers before and without the token
            try:
                if request(f"{c.dashboard}/api/gcs_healthz")[0] == 200 and c.token_path.is_file():
                    break
            except OSError:
                pass
            assert c.processes["head"].poll() is None, f"the head exited: {(d / 'head.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the head's dashboard did not come up in {deadline_s} s"
            time.sleep(0.5)
        c.wait_node("head", deadline_s)
    except BaseException:
        c.shutdown()
        raise
    return c
