"""Three Ray nodes on this machine, started by the launch scripts with token authentication (the head makes the
token, the workers take it), each with its own logical GPUs: the job API refuses requests without the token,
and an authenticated `launch/submit.sh` job trains PPO across the nodes with the policy on one node, the critic
spanning two (its gloo group across nodes) and two TP=2 engines, each packed on a node of its own."""
import json
import re
import subprocess
import sys

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


def test_authenticated_job_trains_across_nodes(cluster, tiny_model, tmp_path):
    cfg = demo_config_dict(tiny_model, str(ROOT / "configs/data/demo_prompts.jsonl"), str(tmp_path / "run"))
    cfg["run"]["steps"] = 2  # step 2 samples with weights synced across nodes
    cfg["ppo"].update({"kl_coef": 0.0, "log_kl": False})  # no reference: fewer processes
    cfg["placement"] = PLACEMENT
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        ["bash", "launch/submit.sh", str(tmp_path / "job.yaml"), "run.save_final=false"], cwd=ROOT, capture_output=True,
        text=True, env=cluster.env(RAY_ADDRESS=cluster.dashboard, RLHF_PYTHON=sys.executable), timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout + out.stderr
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["sync/verified"] for r in rows)
    assert all(r["critic/loss"] == r["critic/loss"] for r in rows)  # finite: the critic's all-reduce crossed nodes

    where = placement_from_log((run / "train.log").read_text())
    nodes = {n["node_id"][:12] for n in cluster.alive().values()}
    policy = {r["node"] for r in where["policy"]}
    critic = [r["node"] for r in where["critic"]]
    engines = where["rollout"]
    assert len(policy) == 1 and policy <= nodes  # the learner on one node
    assert len(set(critic)) == 2  # a learner group spanning two nodes
    assert [e["bundles"] for e in engines] == ["0,1", "2,3"]
    for e in engines:  # each TP=2 engine's bundles packed on one node, the engine's own
        assert e["bundle_nodes"] == [e["node"]]
    assert len({e["node"] for e in engines}) == 2 and not policy & {e["node"] for e in engines}
