"""The labelling app in a real browser: headless Chromium (Debian's package, driven by playwright) clicks and
types through a session as a person would, hostile model output included; the votes come back in the export.
The slow test runs the whole loop: SFT, candidates from it through vLLM, a scripted person labelling them in
the browser, then `collect train` (pairs -> reward model -> PPO).

Chromium is installed by scripts/browser.sh (`make test` runs it). Without it this module fails under CI and is
skipped, with the reason shown, elsewhere (docs/tests.md)."""
import json
import os
import shutil
from pathlib import Path

import pytest

from rlhf_dist.collect.load import start_server, stop_server
from rlhf_dist.commands.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        message = "chromium is not installed: run scripts/browser.sh (or apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser test")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def open_session(browser, base, token, dialogs):
    page = browser.new_page(viewport={"width": 1000, "height": 420})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))  # an alert() would mean script ran
    page.goto(f"{base}/login?token={token}")
    return page


def shown(page) -> dict[str, str]:
    """Letter -> the response text as the page shows it."""
    return {s.get_attribute("id")[-1]: s.locator("pre").inner_text() for s in page.locator("section.response").all()}


def test_a_person_labels_in_the_browser(browser, tmp_path):
    rows = [
        {"id": "d1", "prompt": "Describe the cat.", "responses": ["The cat is happy and bright.", "The cat is sad."]},
        {"id": "h1", "prompt": "<script>alert('p')</script>", "responses": ['<img src=x onerror="alert(1)">', "<b>bold</b>"]},
        {"id": "big", "prompt": "long", "responses": ["y" * (1 << 20), "short"]},
        {"id": "r3", "prompt": "rank these", "responses": ["first", "second", "third"]},
        {"id": "t1", "prompt": "same", "responses": ["one", "two"]},
        {"id": "x1", "prompt": "bad", "responses": ["worse", "worst"]},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc, base, tokens = start_server(tmp_path / "c.jsonl", tmp_path / "v.sqlite", ["ann"])
    dialogs, seen = [], {}
    try:
        page = open_session(browser, base, tokens["ann"], dialogs)
        assert page.locator(".progress").inner_text() == "Done 0, left 6 (item d1)"
        seen["d1"] = shown(page)
        page.fill("textarea[name=rationale]", "A is <kind>")
        shot = Path(os.environ.get("COLLECT_SCREENSHOT", tmp_path / "collect.png"))
        page.screenshot(path=str(shot))  # docs/collect.png: COLLECT_SCREENSHOT=docs/collect.png
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page.locator("textarea").press("Tab")  # out of the text box: keys are shortcuts again
        page.keyboard.press("a")  # the shortcut for "A is better"
        page.wait_for_selector("text=Saved your vote on item d1")
        seen["h1"] = shown(page)
        assert seen["h1"] == {"A": rows[1]["responses"][0], "B": rows[1]["responses"][1]} or \
            seen["h1"] == {"A": rows[1]["responses"][1], "B": rows[1]["responses"][0]}
        assert page.locator("section.prompt pre").inner_text() == rows[1]["prompt"]  # shown as text, not run
        assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
        page.get_by_role("button", name="B is better").click()
        page.wait_for_selector("text=Saved your vote on item h1")
        assert page.locator(".cut").first.inner_text() == "Showing the first 200000 of 1048576 characters."
        seen["big"] = shown(page)
        page.keyboard.press("s")  # skip
        page.wait_for_selector("text=Saved your vote on item big")
        seen["r3"] = shown(page)
        for p, letter in enumerate("ABC"):  # rank by the text's own order: first, second, third
            page.select_option(f"select[name=rank_{p}]", str(["first", "second", "third"].index(seen["r3"][letter]) + 1))
        page.keyboard.press("r")
        page.wait_for_selector("text=Saved your vote on item r3")
        page.keyboard.press("t")
        page.wait_for_selector("text=Saved your vote on item t1")
        page.get_by_role("button", name="Both bad").click()
        page.wait_for_selector("text=Nothing left for you")
        assert "You voted on 5 items and skipped 1" in page.inner_text("main")
        page.goto(f"{base}/progress")
        assert page.locator("tbody tr").inner_text().split() == ["ann", "5", "1", "0"]
        assert dialogs == []
    finally:
        stop_server(proc)
    assert main(["collect", "export", str(tmp_path / "v.sqlite"), str(tmp_path / "pairs.jsonl")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    got = [(p["item"], p["chosen"], p["rejected"]) for p in pairs]
    assert got == [("d1", seen["d1"]["A"], seen["d1"]["B"]), ("h1", seen["h1"]["B"], seen["h1"]["A"]),
                   ("r3", "first", "second"), ("r3", "first", "third"), ("r3", "second", "third")]
    assert pairs[0]["rationale"] == "A is <kind>"


@pytest.mark.slow
def test_the_loop_sft_candidates_browser_labels_reward_model_ppo(browser, ray_session, tiny_model, tmp_path):
    """`collect start` (its two steps before serving), the app served as `collect serve`, a scripted person
    preferring the more pleasant response in the browser, then `collect train`."""
    from rlhf_dist.collect.store import read_votes
    from rlhf_dist.data.synthetic import pleasant_score
    from rlhf_dist.trainers.collect_loop import prepare, train

    session, cfg = prepare("configs/collect_cpu", [f"sft:model.path={tiny_model}", "sft:model.make_tiny=false",
                                                   "sft:run.progress_bar=false", "sft:run.tensorboard=false"],
                           {"annotators": ["ann"]}, str(tmp_path / "session"))
    items = [json.loads(line) for line in Path(cfg.candidates).read_text().splitlines()]
    assert len(items) == 20 and all(len(i["responses"]) == 2 for i in items)  # 20 demo prompts x 2 from vLLM
    proc, base, tokens = start_server(Path(cfg.candidates), Path(cfg.store), ["ann"])
    dialogs = []
    try:
        page = open_session(browser, base, tokens["ann"], dialogs)
        for n in range(20):
            prompt = page.locator("section.prompt pre").inner_text()
            texts = shown(page)
            a, b = (pleasant_score(prompt, texts[k]) for k in "AB")
            page.keyboard.press("a" if a > b else "b" if b > a else "t")
            page.wait_for_selector("text=Saved your vote on item")
        assert page.locator("h1").inner_text() == "Nothing left for you"
        assert dialogs == []
    finally:
        stop_server(proc)
    votes = read_votes(cfg.store)
    assert len(votes) == 20 and len({v["item"] for v in votes}) == 20
    out = train(str(session), ["rm:run.progress_bar=false", "rm:run.tensorboard=false", "ppo:run.steps=1", "rm:train.epochs=2",
                               "ppo:run.progress_bar=false", "ppo:run.tensorboard=false", "ppo:run.save_final=false"])
    summary = out["summary"]
    assert summary["votes"] == 20 and summary["votes_prefer"] + summary["votes_tie"] == 20
    assert summary["pairs"] + summary["dropped_empty_pairs"] + summary["dropped_identical_pairs"] == summary["votes_prefer"]
    assert summary["pairs"] >= 4
    for row in (json.loads(line) for line in out["pairs"].read_text().splitlines()):
        assert pleasant_score(row["prompt"], row["chosen"]) > pleasant_score(row["prompt"], row["rejected"])
    assert (out["rm"] / "final" / "reward_stats.json").is_file()
    rows = [json.loads(line) for line in (out["ppo"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "reward/mean" in rows[0]
