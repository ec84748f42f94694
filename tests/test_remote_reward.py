"""Reward functions: per-call timeouts, bounded retries, clear errors (never a silent 0); the HTTP reward
client against a server on loopback."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_dist.config import RewardFunction
from rlhf_dist.errors import RewardError
from rlhf_dist.rewards.functions import RuleRewards

CALLS = {"flaky": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/flaky":
            CALLS["flaky"] += 1
            if CALLS["flaky"] == 1:
                self.send_error(503)
                return
        if self.path == "/auth" and self.headers.get("Authorization") != "Bearer s3cret":
            self.send_error(401)
            return
        reward = {"/bool": True, "/string": "0.75", "/null": None, "/list": [1.0]}.get(self.path, float(len(body["response"])))
        out = json.dumps({"reward": reward, "label": body["label"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def remote(url, **kw):
    return RewardFunction(name="rlhf_dist.rewards.remote:http_reward", kwargs={"url": url, **kw.pop("kwargs", {})}, **kw)


def test_http_reward_scores_and_passes_labels(server):
    rules = RuleRewards([remote(f"{server}/score")], has_labels=True)
    assert rules(["p", "q"], ["abc", "de"], labels=["x", "y"]) == [3.0, 2.0]


def test_api_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "s3cret")
    rules = RuleRewards([remote(f"{server}/auth", kwargs={"api_key_env": "TEST_JUDGE_KEY"})])
    assert rules(["p"], ["abcd"]) == [4.0]
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(RewardError, match="environment variable TEST_JUDGE_KEY"):
        rules(["p"], ["abcd"])


def test_slow_server_times_out_with_a_clear_error(server):
    rules = RuleRewards([remote(f"{server}/slow", timeout_s=0.5, retries=1)])
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"http_reward failed on sample 0 after 2 attempt\(s\): timed out after 0.5 s"):
        rules(["p"], ["abc"])
    assert time.monotonic() - t0 < 2.5


def test_transient_failure_is_retried(server):
    CALLS["flaky"] = 0
    rules = RuleRewards([remote(f"{server}/flaky", retries=1)])
    assert rules(["p"], ["abcde"]) == [5.0]
    CALLS["flaky"] = 0
    with pytest.raises(RewardError, match="HTTP Error 503"):
        RuleRewards([remote(f"{server}/flaky", retries=0)])(["p"], ["abcde"])


def test_python_function_hang_and_nan_are_errors():
    with pytest.raises(RewardError, match="timed out after 0.3 s"):
        RuleRewards([RewardFunction(name="tests.helpers:sleepy", timeout_s=0.3)])(["p"], ["r"])
    with pytest.raises(RewardError, match="returned nan"):
        RuleRewards([RewardFunction(name="tests.helpers:not_a_number")])(["p"], ["r"])


class Recorder(BaseHTTPRequestHandler):
    """Another local port: records the headers of every request it receives."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"reward": 1.0}')


def test_redirect_to_another_port_never_receives_the_key(monkeypatch):
    other = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    target = f"http://127.0.0.1:{other.server_port}/steal"

    class Redirector(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(307)
            self.send_header("Location", target)
            self.end_headers()

    first = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    for srv in (other, first):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_JUDGE_KEY", "s3cret-redirect")
        Recorder.seen = []
        rules = RuleRewards([remote(f"http://127.0.0.1:{first.server_port}/score", kwargs={"api_key_env": "TEST_JUDGE_KEY"})])
        with pytest.raises(RewardError, match=f"redirect to {target} refused") as e:
            rules(["p"], ["abc"])
        assert Recorder.seen == []  # nothing reached the other port, with or without the key
        assert "s3cret-redirect" not in str(e.value)
    finally:
        first.shutdown()
        other.shutdown()


@pytest.mark.parametrize("path,shown", [("/bool", "bool True"), ("/string", "str '0.75'"), ("/null", "NoneType None"),
                                        ("/list", "list [1.0]")])
def test_a_server_answering_anything_but_a_number_is_an_error(server, path, shown):
    """The docs say the answer must be a number: true and "0.75" are refused, never coerced to 1.0 and 0.75."""
    with pytest.raises(RewardError, match=rf"http_reward failed on sample 0 after 1 attempt\(s\): returned {re.escape(shown)}.*not a number"):
        RuleRewards([remote(f"{server}{path}")])(["p"], ["abc"])
