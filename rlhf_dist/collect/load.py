"""`rlhf-dist bench collect`: scripted annotators voting at once on a real server on loopback.

The server runs as a user runs it (`rlhf-dist collect serve`, its own process); each annotator is a thread
with one keep-alive connection that loads its next item, votes, and loads the next, a bounded number of times.
Afterwards the store is read back: every acknowledged vote must be there once, and nothing else.
"""
from __future__ import annotations

import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from rlhf_dist.collect.store import read_votes
from rlhf_dist.errors import RLHFError

FIELD = re.compile(r'<input type="hidden" name="(csrf|item|shown)" value="([^"]*)">')


class LoadError(RLHFError):
    pass


def start_server(candidates: Path, store: Path, names: list[str], deadline_s: float = 60.0, extra: tuple = ()):
    """(process, base URL, name -> token) of a `collect serve` subprocess on a free loopback port."""
    cmd = [sys.executable, "-m", "rlhf_dist", "collect", "serve", str(candidates), "--store", str(store), "--port", "0",
           *[a for n in names for a in ("--annotator", n)], *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    tokens, lines = {}, []
    timer = threading.Timer(deadline_s, proc.kill)  # a server that never says it is up ends the wait
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if m := re.match(r"\s+(\S+): (http://\S+)/login\?token=(\S+)", line):
                tokens[m.group(1)] = m.group(3)
            if m := re.match(r"serving on (http://\S+)", line):
                return proc, m.group(1), tokens
    finally:
        timer.cancel()
    raise LoadError("collect serve: the server did not start within %.0f s; it printed:\n%s" % (deadline_s, "\n".join(lines[-20:])))


def stop_server(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


class Annotator:
    """One scripted person: a keep-alive connection, their token, the votes the server acknowledged."""

    def __init__(self, base: str, name: str, token: str, seed: int):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.name, self.auth = name, {"Authorization": f"Bearer {token}"}
        self.rng = random.Random(seed)
        self.acked: list[str] = []
        self.latencies: list[float] = []

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, dict, str]:
        headers = dict(self.auth)
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()

    def vote_once(self, page: str) -> str | None:
        """Vote on the item `page` shows; the next page (None when nothing is left)."""
        fields = dict(FIELD.findall(page))
        if "item" not in fields:
            return None
        choice = self.rng.choice(["A", "B", "A", "B", "tie", "both_bad", "skip"])
        t0 = time.perf_counter()
        status, headers, _ = self.request("POST", "/vote", urlencode({**fields, "choice": choice, "rationale": ""}))
        self.latencies.append(time.perf_counter() - t0)
        if status != 303:
            raise LoadError(f"{self.name}: vote on {fields['item']} answered {status}")
        self.acked.append(fields["item"])
        status, _, page = self.request("GET", headers.get("location", "/"))
        return page if status == 200 else None

    def run(self, votes: int, errors: list) -> None:
        try:
            status, _, page = self.request("GET", "/")
            while page is not None and len(self.acked) < votes:
                page = self.vote_once(page)
        except Exception as e:  # noqa: BLE001 - reported with the annotator's name, the run goes on to count
            errors.append(f"{self.name}: {type(e).__name__}: {e}")
        finally:
            self.conn.close()


def load_run(annotators: int, votes: int, repeat: int, work: Path, deadline_s: float = 300.0) -> dict:
    """One run: `annotators` threads sharing `votes` votes, each on an item of its own (overlap 1)."""
    cands, store = work / f"candidates-{repeat}.jsonl", work / f"votes-{repeat}.sqlite"
    with cands.open("w") as f:
        for i in range(votes + annotators):
            f.write(json.dumps({"id": f"i{i:05d}", "prompt": f"prompt {i}", "responses": [f"left {i}", f"right {i}"]}) + "\n")
    names = [f"a{k:02d}" for k in range(annotators)]
    proc, base, tokens = start_server(cands, store, names)
    try:
        people = [Annotator(base, n, tokens[n], repeat * 1000 + k) for k, n in enumerate(names)]
        per = [votes // annotators + (k < votes % annotators) for k in range(annotators)]
        errors: list[str] = []
        threads = [threading.Thread(target=p.run, args=(v, errors), daemon=True) for p, v in zip(people, per)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline_s - (time.perf_counter() - t0)))
        seconds = time.perf_counter() - t0
        if any(t.is_alive() for t in threads):
            errors.append(f"annotators still voting after {deadline_s:.0f} s")
    finally:
        stop_server(proc)
    stored = read_votes(store)
    keys = [(v["annotator"], v["item"]) for v in stored]
    acked = {(p.name, item) for p in people for item in p.acked}
    lat = sorted(x for p in people for x in p.latencies)
    by_item = {}
    for v in (v for v in stored if v["kind"] != "skip"):  # a skipped item goes on to someone else
        by_item.setdefault(v["item"], set()).add(v["annotator"])
    return {"repeat": repeat, "annotators": annotators, "votes": len(acked), "seconds": round(seconds, 3),
            "votes_per_s": round(len(acked) / seconds, 1), "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
            "lost": len(acked - set(keys)), "duplicated": len(keys) - len(set(keys)), "unacknowledged": len(set(keys) - acked),
            "shared_items": sum(len(a) > 1 for a in by_item.values()), "errors": errors}


def bench_collect(annotators: int, votes: int, repeats: int, log=print) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        for rep in range(repeats):
            row = load_run(annotators, votes, rep, Path(tmp))
            log(f"collect load run {rep + 1}/{repeats}: {row['votes']} votes in {row['seconds']} s")
            rows.append(row)
    bad = [r for r in rows if r["lost"] or r["duplicated"] or r["unacknowledged"] or r["shared_items"] or r["errors"]]
    return {"rows": rows, "ok": not bad}
