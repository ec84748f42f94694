"""Closed to the network: every socket a local run listens on is on loopback (read from the process tree with
psutil), Ray refuses calls without the run's token, the job's rendezvous stores bind to the node address, and
an unreachable remote cluster is an error naming its address."""
import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from rlhf_dist.errors import WaitTimeout

from tests.conftest import demo_config_dict

ROOT = Path(__file__).resolve().parents[1]


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening(root_pid: int) -> set[tuple[str, str, int, str]]:
    """(process name, address, port, kind) of every listening TCP socket and unconnected UDP socket in the tree."""
    out = set()
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type.name == "SOCK_DGRAM" and not c.raddr):
                    out.add((name, c.laddr.ip, c.laddr.port, c.type.name))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def gcs_call(port: int, token: str | None):
    """One GCS RPC (list the nodes), with or without the bearer token; returns the status code name."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch)
        meta = [("authorization", f"Bearer {token}")] if token else None
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=meta)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name


def run_token(root_pid: int) -> str:
    """The run's token, from the environment its GCS was started with (the driver's own set it after start)."""
    gcs = next(p for p in psutil.Process(root_pid).children(recursive=True) if p.name() == "gcs_server")
    return Path(gcs.environ()["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


@pytest.mark.slow
def test_a_short_run_listens_on_loopback_only_and_ray_wants_the_token(tiny_model, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "the {w} cat"}}\n' for w in ["red", "big", "sad", "old"]))
    d = demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the CLI's own start-up, nothing inherited
    env["PYTHONPATH"] = str(ROOT)
    proc = psutil.Popen([sys.executable, "-m", "rlhf_dist", "train", str(tmp_path / "c.yaml")], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, calls = set(), {}
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        now = listening(proc.pid)
        seen |= now
        gcs = [port for name, _, port, _ in now if name == "gcs_server"]
        if gcs and not calls and any(n.startswith("ray::PolicyWorker") for n, *_ in now):
            calls = {"without": gcs_call(gcs[0], None), "wrong": gcs_call(gcs[0], "0" * 64),
                     "with": gcs_call(gcs[0], run_token(proc.pid))}
        time.sleep(0.25)
    if proc.poll() is None:
        proc.kill()
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    names = {name for name, *_ in seen}
    # The run's parts were all seen listening: Ray's servers, the learners (DeepSpeed and weight-sync stores),
    # the engines.
    for part in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::PolicyWorker", "ray::RolloutEngine"):
        assert any(n.startswith(part) for n in names), (part, sorted(names))
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, exposed
    assert calls == {"without": "UNAUTHENTICATED", "wrong": "UNAUTHENTICATED", "with": "OK"}, calls
    print("\n".join(f"{name:<32} {kind:<12} {ip}:{port}" for name, ip, port, kind in sorted(seen)))


def test_the_test_session_ray_is_loopback_only(ray_session):
    """The fixture starts Ray as the CLI does; its servers and a worker listen on loopback only."""
    import ray

    @ray.remote(num_cpus=0)
    def pid():
        return os.getpid()

    worker = ray.get(pid.remote())
    seen = listening(os.getpid())
    assert any(p == worker for p in [c.pid for c in psutil.Process(os.getpid()).children(recursive=True)])
    assert {"gcs_server", "raylet"} <= {name for name, *_ in seen}
    assert not [s for s in seen if not is_loopback(s[1])]
    assert os.environ["RAY_AUTH_MODE"] == "token" and ray.util.get_node_ip_address() == "127.0.0.1"


def test_rendezvous_store_listens_on_the_node_address_only(monkeypatch):
    import datetime

    from rlhf_dist.dist import LOCAL_IP_ENV, reserve_port, tcp_store

    monkeypatch.setenv(LOCAL_IP_ENV, "127.0.0.1")
    host, port = reserve_port()
    timeout = datetime.timedelta(seconds=30)
    joined = {}
    # The master waits for the other rank: that one connects from a thread, as a peer process would.
    peer = threading.Thread(target=lambda: joined.setdefault("store", tcp_store(host, port, 2, False, timeout)))
    peer.start()
    master = tcp_store(host, port, 2, True, timeout)
    peer.join(30)
    joined["store"].set("k", "v")
    assert master.get("k") == b"v"
    mine = {(ip, p) for _, ip, p, _ in listening(os.getpid())}
    assert ("127.0.0.1", port) in mine
    assert not [(ip, p) for ip, p in mine if p == port and not is_loopback(ip)]


def test_an_unreachable_remote_cluster_is_named_after_the_deadline():
    from rlhf_dist.dist import free_port
    from rlhf_dist.ray_start import join_remote_ray

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=rf"^cluster.address {address}: no Ray cluster answered within 2 s \(timeouts.actor_start_s\)"):
        join_remote_ray(address, 2)
    assert time.monotonic() - t0 < 10
