"""`rlhf-dist report`: the PNG is written and every plotted line equals the metrics it claims to show."""
import json
import random


from rlhf_dist.commands.cli import main
from rlhf_dist.commands.report import figure, load_runs, summary


def fake_run(path, seed: int, steps: int = 12):
    """A run directory as a PPO run leaves it (metrics.jsonl rows), with an eval row at step 0 and every 4."""
    rng = random.Random(seed)
    path.mkdir()
    rows = [{"step": 0, "eval/greedy/pass@1": 0.0, "eval/sampled/pass@8": 0.1}]
    for s in range(1, steps + 1):
        row = {"step": s, "reward/mean": rng.random(), "kl/mean": rng.random() / 10, "response/length_mean": rng.randint(1, 9),
               "policy/entropy": rng.random(), "timing/step": 1 + rng.random(), "timing/generate": rng.random(),
               "timing/update": rng.random(), "rollout/tokens_per_s": 1000.0 + s, "sync/verified": True}
        if s % 4 == 0:
            row.update({"eval/greedy/pass@1": s / 20, "eval/sampled/pass@8": s / 15})
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_report_png_and_plotted_series_equal_the_metrics(tmp_path):
    a, b = fake_run(tmp_path / "run-a", 1), fake_run(tmp_path / "run-b", 2, steps=7)
    assert main(["report", str(tmp_path / "run-a"), str(tmp_path / "run-b")]) == 0
    png = tmp_path / "run-a" / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (tmp_path / "run-a" / "report.md").read_text()

    fig = figure(load_runs([tmp_path / "run-a", tmp_path / "run-b"]))
    lines = {(ax.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes for line in ax.get_lines()}
    for name, rows in (("run-a", a), ("run-b", b)):
        for title, key in (("reward", "reward/mean"), ("KL to the reference (per token)", "kl/mean"),
                           ("response length (tokens)", "response/length_mean"), ("policy entropy", "policy/entropy"),
                           ("seconds per step, by phase", "timing/update"), ("eval", "eval/sampled/pass@8")):
            want = [(r["step"], r[key]) for r in rows if key in r]
            x, y = lines[(title, f"{name}: {key}")]
            assert list(zip(x, y)) == want, (name, key)
    assert ("eval", "run-a: eval/greedy/pass@1") in lines
    assert not any("timing/infer" in label for _, label in lines)  # not logged: not drawn
    assert "| reward/mean | " in md and "time per step (median)" in md and "generated tokens/s (mean): 1006" in md


def test_summary_first_last_best_by_hand(tmp_path):
    (tmp_path / "r").mkdir()
    rows = [{"step": 1, "reward/mean": 0.2, "kl/mean": 0.3, "timing/step": 2.0},
            {"step": 2, "reward/mean": 0.9, "kl/mean": 0.1, "timing/step": 4.0},
            {"step": 3, "reward/mean": 0.5, "kl/mean": 0.2, "timing/step": 3.0}]
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = summary(load_runs([tmp_path / "r"]))
    assert "| reward/mean | 0.2 | 0.5 | 0.9 (2) |" in md
    assert "| kl/mean | 0.3 | 0.2 | 0.1 (2) |" in md  # lower KL is best
    assert "time per step (median): 3.00 s" in md


def test_report_refuses_a_missing_run_and_an_existing_out(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl' does not exist" in capsys.readouterr().err
    fake_run(tmp_path / "r", 3)
    (tmp_path / "mine.png").write_text("keep")
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "mine.png")]) == 2
    assert (tmp_path / "mine.png").read_text() == "keep"


def test_eval_panel_without_pass_at_k_shows_reward_means(tmp_path):
    (tmp_path / "r").mkdir()
    rows = [{"step": s, "reward/mean": 0.1, "eval/greedy/char_fraction": 0.3 + s / 100, "eval/greedy/response_length": 9.0,
             "eval/seconds": 1.0} for s in (0, 5)]
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = figure(load_runs([tmp_path / "r"]))
    (eval_ax,) = [ax for ax in fig.axes if ax.get_title() == "eval"]
    assert [(line.get_label(), list(line.get_ydata())) for line in eval_ax.get_lines()] == [("r: eval/greedy/char_fraction", [0.3, 0.35])]
