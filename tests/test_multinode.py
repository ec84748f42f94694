"""Three Ray nodes on this machine, started by the launch scripts with token authentication (the head makes the
token, the workers take it), each with its own logical GPUs: the job API refuses requests without the token,
and an authenticated `launch/submit.sh` job trains PPO across the nodes with the policy on one node, the critic
spanning two (its gloo group across nodes) and two TP=2 engines, each packed on a node of its own. Then a node's
raylet is killed mid-run: the run names the node and the ranks it held, cannot place the layout on the nodes
left, and stops with the command that resumes; resumed on a replacement node, it equals the uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict
from tests.launch_cluster import BIN, ROOT, request, start_cluster

pytestmark = pytest.mark.slow

NODE_GPUS = {"head": 3, "b": 3, "c": 2}
# learn: the policy on one node; crit: the critic on two nodes; gen: two TP=2 engines, one per node. On nodes of
# 3, 3 and 2 GPUs the engines can share no node with the policy (2 + 2 > 3), whatever placement is chosen.
PLACEMENT = {
    "pools": {"learn": {"nodes": 1, "gpus_per_node": 2}, "crit": {"nodes": 2, "gpus_per_node": 1},
              "gen": {"nodes": 2, "gpus_per_node": 2}},
    "policy": {"pool": "learn", "num_gpus": 2, "zero_stage": 2},
    "critic": {"pool": "crit", "num_gpus": 2, "zero_stage": 2},
    "reference": {"pool": "learn", "num_gpus": 1},
    "rollout": {"pool": "gen", "num_engines": 2, "tensor_parallel_size": 2},
}


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(NODE_GPUS["head"])
    try:
        for name in ("b", "c"):  # both start at once
            c.add_worker(name, NODE_GPUS[name], deadline_s=None)
        for name in ("b", "c"):
            c.wait_node(name, 120)
        yield c
    finally:
        c.shutdown()


def test_head_made_a_private_token(cluster):
    assert cluster.token_path.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", cluster.token)
    log = (cluster.dir / "head.log").read_text()
    assert f"made a Ray token in {cluster.token_path} (mode 600)" in log and cluster.token not in log
    assert sorted(cluster.alive()) == ["b", "c", "head"]


def test_job_api_and_dashboard_refuse_requests_without_the_token(cluster, tmp_path):
    marker = tmp_path / "ran"
    job = json.dumps({"entrypoint": f"touch {marker}"}).encode()
    assert request(f"{cluster.dashboard}/api/jobs/", data=job)[0] == 401  # no token
    assert request(f"{cluster.dashboard}/api/jobs/", "0" * 64, data=job)[0] == 403  # a wrong one
    assert request(f"{cluster.dashboard}/api/v0/nodes")[0] == 401  # the dashboard's state API too
    assert request(f"{cluster.dashboard}/api/jobs/", cluster.token)[0] == 200
    # Ray's own client without the token is refused too.
    env = cluster.env(RAY_ADDRESS=cluster.dashboard, RAY_AUTH_MODE="disabled")
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--", "touch", str(marker)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "Unauthorized: Missing authentication token" in out.stderr, out.stderr[-2000:]
    assert not marker.exists()


def placement_from_log(text: str) -> dict[str, list[dict]]:
    """role -> per rank: the node its process runs on and the nodes of its bundles, from the run's log lines
    ("rollout: rank 0 pid 1 on 1.2.3.4 node abc (bundles 0,1 on node abc), rank 1 ...")."""
    out = {}
    for role in ("policy", "critic", "rollout"):
        line = re.search(rf"^[\d-]+ [\d:]+ {role}: (rank 0 .*)$", text, re.M).group(1)
        ranks = []
        for part in re.finditer(r"rank (\d+) pid \d+ on \S+ node (\w+)(?: \(bundles ([\d,]+) on node ([\w, ]+)\))?", line):
            ranks.append({"rank": int(part[1]), "node": part[2], "bundles": part[3], "bundle_nodes": (part[4] or part[2]).split(", ")})
        out[role] = ranks
    return out


def job_config(tiny_model, tmp_path, name: str) -> Path:
    cfg = demo_config_dict(tiny_model, str(ROOT / "configs/data/demo_prompts.jsonl"), str(tmp_path / name))
    cfg["run"].update({"steps": 4, "save_final": False})  # steps 2+ sample with weights synced across nodes
    cfg["ppo"].update({"kl_coef": 0.0, "log_kl": False})  # no reference: fewer processes
    cfg["placement"] = PLACEMENT
    cfg["checkpoint"] = {"every_n_steps": 2, "keep_last": 2}
    cfg["fault_tolerance"] = {"max_restarts": 1}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit(cluster, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "launch/submit.sh", str(config), *overrides], cwd=ROOT, capture_output=True, text=True,
                          env=cluster.env(RAY_ADDRESS=cluster.dashboard, RLHF_PYTHON=sys.executable), timeout=900)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tiny_model, tmp_path_factory):
    """The authenticated job, run to its end: 4 steps, checkpoints at 2 and 4."""
    tmp = tmp_path_factory.mktemp("job")
    out = submit(cluster, job_config(tiny_model, tmp, "run"))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout + out.stderr
    return tmp / "run"


def test_authenticated_job_trains_across_nodes(cluster, uninterrupted):
    rows = read_metrics(uninterrupted)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["sync/verified"] for r in rows)
    assert all(r["critic/loss"] == r["critic/loss"] for r in rows)  # finite: the critic's all-reduce crossed nodes
    assert all(r["sync/probe_logprob_diff_max"] < 1e-3 for r in rows)  # the engines of both nodes hold the weights

    where = placement_from_log((uninterrupted / "train.log").read_text())
    nodes = {n["node_id"][:12] for n in cluster.alive().values()}
    policy = {r["node"] for r in where["policy"]}
    critic = [r["node"] for r in where["critic"]]
    engines = where["rollout"]
    assert len(policy) == 1 and policy <= nodes  # the learner on one node
    assert len(set(critic)) == 2  # a learner group spanning two nodes
    assert [e["bundles"] for e in engines] == ["0,1", "2,3"]
    for e in engines:  # each TP=2 engine's bundles packed on one node, the engine's own (as its seats report)
        assert e["bundle_nodes"] == [e["node"]]
    assert len({e["node"] for e in engines}) == 2 and not policy & {e["node"] for e in engines}


COMPARED = ["reward/mean", "advantages/mean", "returns/mean", "values/mean", "policy/loss", "policy/entropy", "critic/loss",
            "sync/probe_logprob_diff_max"]


def kill_raylet_after_checkpoint(cluster, node: str, run_dir: Path, killed: dict) -> None:
    """SIGKILL node's raylet once the run's step-2 checkpoint is complete (its workers then die with it)."""
    import psutil

    deadline = time.monotonic() + 600
    done = run_dir / "checkpoints" / "step_00000002" / "COMPLETE"
    group = cluster.processes[node].pid
    while time.monotonic() < deadline and not done.is_file():
        time.sleep(0.05)
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.info["name"] == "raylet" and os.getpgid(proc.info["pid"]) == group:
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed["at"] = time.time()
                return
        except (ProcessLookupError, psutil.Error):
            continue


def test_a_lost_node_stops_the_run_with_a_resume_command_and_the_resumed_run_equals_the_uninterrupted(
        cluster, uninterrupted, tiny_model, tmp_path):
    config = job_config(tiny_model, tmp_path, "lost")
    run = tmp_path / "lost"
    node_c = cluster.alive()["c"]["node_id"]
    killed: dict = {}
    killer = threading.Thread(target=kill_raylet_after_checkpoint, args=(cluster, "c", run, killed), daemon=True)
    killer.start()
    out = submit(cluster, config)
    killer.join(timeout=10)
    assert "at" in killed, "the test never found node c's raylet"
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    log = (run / "train.log").read_text()
    # Noticed, named with the ranks it held (node c's 2 GPUs hold the policy or one engine, as placed), and, with
    # the nodes left holding 6 of the layout's 8 GPUs, stopped with the command that resumes.
    lost = re.search(r"node lost: lost node (\w+) \(it held ([^)]*)\), noticed ([\d.]+) s after", log)
    assert lost and node_c.startswith(lost[1]), "\n".join(line for line in log.splitlines() if "pid=" not in line)[-4000:]
    held = [f"{role} rank {r['rank']}" for role, ranks in placement_from_log(log).items() for r in ranks
            if node_c.startswith(r["node"]) or any(node_c.startswith(n) for n in r["bundle_nodes"])]
    assert held and lost[2] == ", ".join(held), (lost[2], held)
    noticed = re.search(r"^([\d-]+ [\d:]+) node lost:", log, re.M)[1]
    detect_s = time.mktime(time.strptime(noticed, "%Y-%m-%d %H:%M:%S")) - killed["at"]
    print(f"node loss noticed {detect_s:.0f} s after the raylet was killed ({lost[3]} s after the first failed call)")
    assert "restart 1/1: restarting all actor groups, resuming from checkpoint step 2" in log
    resume = str(run / "checkpoints" / "step_00000002")
    assert f"the cluster left cannot hold the layout (placement.pools." in text and f"resume={resume}" in text, text[-3000:]

    cluster.stop("c")  # what is left of node c
    cluster.add_worker("c2", NODE_GPUS["c"])  # a replacement node
    t0 = time.monotonic()
    out = submit(cluster, config, f"resume={resume}")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    print(f"resumed run: {time.monotonic() - t0:.0f} s (start-up and steps 3-4)")
    full, resumed = read_metrics(uninterrupted), read_metrics(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # no trained step lost, none twice
    for a, b in zip(full, resumed, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
