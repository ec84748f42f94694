"""`rlhf-dist report RUN_DIR [RUN_DIR ...]`: a PNG of a run's curves (several runs overlaid) and a short
markdown summary, read from each run's metrics.jsonl."""
from __future__ import annotations

import statistics
from pathlib import Path

from rlhf_dist.config import ConfigError
from rlhf_dist.metrics import metric_rows
from rlhf_dist.outputs import check_new_file, write_file

FORMATS = (".png", ".svg", ".pdf")  # what the figure is saved as, by --out's suffix

# (panel title, metric keys); a panel shows whichever of its keys the runs logged.
PANELS = [
    ("reward", ["reward/mean"]),
    ("KL to the reference (per token)", ["kl/mean"]),
    ("response length (tokens)", ["response/length_mean"]),
    ("policy entropy", ["policy/entropy"]),
    ("eval", None),  # every eval/ pass@k and mean reward
    ("seconds per step, by phase", ["timing/step", "timing/generate", "timing/score", "timing/infer", "timing/update", "timing/sync"]),
]
SUMMARY = ["reward/mean", "kl/mean", "response/length_mean", "policy/entropy"]
STYLES = ["-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))]


def eval_keys(runs: dict[str, list[dict]]) -> list[str]:
    from rlhf_dist.console import headline_keys

    return sorted(headline_keys({k for rows in runs.values() for r in rows for k in r}))


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def load_runs(run_dirs: list[str | Path], log=print) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for d in run_dirs:
        path = Path(d) / "metrics.jsonl"
        if Path(d).exists() and not Path(d).is_dir():
            raise ConfigError(f"report: {str(d)!r} is not a directory (a run directory holds metrics.jsonl)")
        if not path.is_file():
            raise ConfigError(f"report: {str(path)!r} does not exist (is {d} a run directory?)")
        rows, partial = metric_rows(path)
        if partial is not None:
            log(f"report: {path}: left out its last line, cut off mid-row ({len(partial)} bytes; the run was stopped while writing it)")
        runs[Path(d).name if Path(d).name not in runs else str(d)] = rows
    return runs


def report_paths(run_dirs: list[str | Path], out: str | Path | None, force: bool = False) -> tuple[Path, Path]:
    """Where the figure and the summary go, checked before anything is read or written: a named --out (and the
    .md beside it) is never replaced unless forced; the default, RUN_DIR/report.png, is the run's own."""
    if out is None:
        png = Path(run_dirs[0]) / "report.png"
        return png, png.with_suffix(".md")
    png = Path(out)
    if png.suffix.lower() not in FORMATS:
        raise ConfigError(f"report --out: {str(out)!r}: the figure is written as {', '.join(FORMATS)} (by the suffix)")
    md = png.with_suffix(".md")
    check_new_file(png, "report --out", force)
    check_new_file(md, "report --out (the summary beside it)", force)
    return png, md


def figure(runs: dict[str, list[dict]]):
    """The report's figure: one panel per PANELS entry; a line's label is 'run: metric'."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).flatten()
    colors = [f"C{i}" for i in range(10)]
    for ax, (title, keys) in zip(axes, PANELS):
        keys = eval_keys(runs) if keys is None else keys
        drawn = 0
        for i, (name, rows) in enumerate(runs.items()):
            for j, key in enumerate(keys):
                x, y = series(rows, key)
                if x:
                    # One run: a colour per metric. Several: a colour per run, a line style per metric.
                    color, style = (colors[j % 10], "-") if len(runs) == 1 else (colors[i % 10], STYLES[j % len(STYLES)])
                    ax.plot(x, y, color=color, linestyle=style, marker="o" if len(x) < 30 else None,
                            markersize=3, label=f"{name}: {key}")
                    drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    return fig


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def summary(runs: dict[str, list[dict]]) -> str:
    lines = ["# Run report", ""]
    for name, rows in runs.items():
        train_rows = [r for r in rows if "timing/step" in r]
        lines += [f"## {name}", "", f"steps logged: {len(train_rows)}"]
        if train_rows:
            per_step = statistics.median(r["timing/step"] for r in train_rows)
            lines.append(f"time per step (median): {per_step:.2f} s")
            tps = [r["rollout/tokens_per_s"] for r in train_rows if "rollout/tokens_per_s" in r]
            if tps:
                lines.append(f"generated tokens/s (mean): {statistics.fmean(tps):.0f}")
        lines += ["", "| metric | first | last | best (step) |", "|---|---|---|---|"]
        for key in SUMMARY + eval_keys({name: rows}):
            x, y = series(rows, key)
            if not x:
                continue
            # Lower is better for KL; higher for everything else shown.
            best = min(range(len(y)), key=lambda i: y[i]) if key.startswith("kl/") else max(range(len(y)), key=lambda i: y[i])
            lines.append(f"| {key} | {_fmt(y[0])} | {_fmt(y[-1])} | {_fmt(y[best])} ({x[best]}) |")
        lines.append("")
    return "\n".join(lines)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, force: bool = False, log=print) -> tuple[Path, Path]:
    """Write the figure (default RUN_DIR/report.png of the first run) and the markdown beside it (.md), each
    whole or not at all, never through a link."""
    import io

    png, md = report_paths(run_dirs, out, force)
    runs = load_runs(run_dirs, log)
    buf = io.BytesIO()
    figure(runs).savefig(buf, dpi=90, format=png.suffix.lower().lstrip("."))
    write_file(png, buf.getvalue())
    write_file(md, summary(runs))
    return png, md
