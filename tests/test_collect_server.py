"""The labelling app as a user runs it (`rlhf-dist collect serve` in its own process, on loopback), over HTTP:
no page or write without a token, CSRF and origin checks on writes, hostile model output shown as text, size
limits, strict headers, and a server killed with SIGKILL that loses no acknowledged vote and resumes."""
import json
import os
import re
import signal

import httpx
import psutil
import pytest

from rlhf_dist.collect.load import FIELD, start_server, stop_server
from rlhf_dist.collect.store import read_votes

HOSTILE = [
    {"id": "h1", "prompt": "<script>alert('prompt')</script>", "responses": ['<img src=x onerror="alert(1)">', "</pre><b>bold</b>"]},
    {"id": "h2", "prompt": "long", "responses": ["x" * (1 << 20), "short"]},
]


def candidates(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    rows = HOSTILE + [{"id": f"n{i}", "prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(5)]
    proc, base, tokens = start_server(candidates(tmp / "c.jsonl", rows), tmp / "v.sqlite", ["ann", "bob"],
                                      extra=("--max-body-bytes", "8192", "--overlap", "2"))
    yield {"proc": proc, "base": base, "tokens": tokens, "store": tmp / "v.sqlite"}
    stop_server(proc)


def client(server, who=None):
    headers = {"Authorization": f"Bearer {server['tokens'][who]}"} if who else {}
    return httpx.Client(base_url=server["base"], headers=headers, timeout=30, follow_redirects=False)


def form(page: str) -> dict:
    return dict(FIELD.findall(page))


def test_every_page_and_write_needs_a_token(server):
    with client(server) as anon:
        for method, path in [("GET", "/"), ("GET", "/progress"), ("GET", "/agreement"), ("GET", "/static/style.css"),
                             ("GET", "/static/keys.js"), ("POST", "/vote")]:
            r = anon.request(method, path, data={"choice": "A"} if method == "POST" else None)
            assert r.status_code == 401, (path, r.status_code)
            assert "onerror" not in r.text and "annotator link" in r.text
        wrong = anon.get("/", headers={"Authorization": "Bearer " + "A" * 32})
        assert wrong.status_code == 401
        assert anon.get("/login", params={"token": "nope"}).status_code == 403
        login = anon.get("/login", params={"token": server["tokens"]["bob"]})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = anon.get("/")  # the cookie the link set
        assert page.status_code == 200 and "signed in as bob" in page.text
    assert read_votes(server["store"]) == []


def test_writes_need_the_csrf_token_and_the_same_origin(server):
    with client(server, "bob") as bob, client(server, "ann") as ann:
        fields = form(bob.get("/").text)
        for bad in ({**fields, "csrf": ""}, {**fields, "csrf": form(ann.get("/").text)["csrf"]}):
            r = bob.post("/vote", data={**bad, "choice": "A"})
            assert r.status_code == 403 and "Nothing was saved" in r.text
        r = bob.post("/vote", data={**fields, "choice": "A"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = bob.post("/vote", data={**fields, "choice": "C"})
        assert r.status_code == 400 and "is not one of this item" in r.text
    assert read_votes(server["store"]) == []


def test_model_output_is_shown_as_text(server):
    with client(server, "ann") as ann:
        r = ann.get("/")
        assert r.status_code == 200 and form(r.text)["item"] == "h1"
        page = r.text
        assert "&lt;script&gt;alert(&#39;prompt&#39;)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page and "&lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt;" in page
        assert "<img" not in page and "<b>" not in page
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/keys.js">']  # the one shipped file, no inline code
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        ann.post("/vote", data={**form(page), "choice": "B"})
        r = ann.get("/")
        assert form(r.text)["item"] == "h2"
        assert "Showing the first 200000 of 1048576 characters" in r.text
        assert 200_000 < len(r.text) < 260_000  # cut for display; the store keeps the whole text
    (v,) = read_votes(server["store"])
    assert v["responses"] == HOSTILE[0]["responses"]


def test_size_limits_and_nothing_listed(server):
    with client(server, "ann") as ann:
        fields = form(ann.get("/").text)
        assert ann.post("/vote", content=b"a" * 10000, headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
        chunks = (b"a" * 1000 for _ in range(10))  # no Content-Length: counted as it arrives
        assert ann.post("/vote", content=chunks, headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
        r = ann.post("/vote", data={**fields, "choice": "A", "rationale": "y" * 4001})
        assert r.status_code == 400 and "The rationale is over 4000 characters" in r.text
        for path in ("/static/", "/static", "/static/..%2fapp.py", "/static/../store.py", "/templates/base.html", "/v.sqlite"):
            assert ann.get(path).status_code == 404, path
        assert ann.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding reaches nothing
    listening = [c for c in psutil.Process(server["proc"].pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_sigkill_loses_no_acknowledged_vote_and_each_annotator_resumes(tmp_path):
    rows = [{"id": f"i{i:02d}", "prompt": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"] if i % 3 == 0 else [f"a{i}", f"b{i}"]}
            for i in range(12)]
    cands, store = candidates(tmp_path / "c.jsonl", rows), tmp_path / "v.sqlite"
    proc, base, tokens = start_server(cands, store, ["ann", "bob"], extra=("--overlap", "2"))
    acked = []
    try:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {tokens['ann']}"}) as ann:
            page = ann.get("/").text
            for _ in range(7):
                fields = form(page)
                k = 3 if fields["item"] in ("i00", "i03", "i06", "i09") else 2
                data = {"choice": "rank", **{f"rank_{p}": str(p + 1) for p in range(3)}} if k == 3 else {"choice": "A"}
                r = ann.post("/vote", data={**fields, **data, "rationale": "r"}, follow_redirects=True)
                assert r.status_code == 200 and f"Saved your vote on item {fields['item']}" in r.text
                acked.append(fields["item"])
                page = r.text
            open_item = form(page)  # shown, not yet voted on, when the server dies
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [v["item"] for v in read_votes(store)] == acked
    proc, base, tokens2 = start_server(cands, store, ["ann", "bob"], extra=("--overlap", "2"))
    try:
        assert tokens2 == tokens  # the links printed before still work
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {tokens['ann']}"}) as ann:
            assert form(ann.get("/").text) == open_item  # the same item, in the same order
            data = {"choice": "rank", **{f"rank_{p}": str(3 - p) for p in range(3)}} if open_item["shown"].count(",") == 2 else {"choice": "B"}
            assert ann.post("/vote", data={**open_item, **data}).status_code == 303  # a form from before the restart
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {tokens['bob']}"}) as bob:
            fields = form(bob.get("/").text)
            assert fields["item"] == "i00"  # overlap 2: bob starts at the first item
            assert bob.post("/vote", data={**fields, "choice": "tie"}).status_code == 303
            page = bob.get("/agreement").text
            assert "1 items voted on by two or more annotators" in page and "<td>ann / bob</td><td>1</td><td>0</td>" in page
    finally:
        stop_server(proc)
    votes = read_votes(store)
    assert [(v["annotator"], v["item"]) for v in votes] == [("ann", i) for i in acked + [open_item["item"]]] + [("bob", "i00")]
