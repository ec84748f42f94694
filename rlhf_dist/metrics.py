"""Run directory, metrics.jsonl, TensorBoard events."""
from __future__ import annotations

import json
import time
from pathlib import Path


def fresh_run_dir(path: str) -> Path:
    """`path`, or `path-2`, `path-3`, ... if it already holds something: an earlier run is never overwritten."""
    base = Path(path)
    candidate, i = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


class MetricsWriter:
    """metrics.jsonl plus the loggers of `run.loggers`; `record` (config, derived values) goes to each once."""

    def __init__(self, run_dir: Path, run, record: dict | None = None):
        from rlhf_dist.loggers import open_loggers

        self.file = (run_dir / "metrics.jsonl").open("a", buffering=1)
        self.loggers = open_loggers(run_dir, run, record or {})

    def write(self, step: int, metrics: dict) -> None:
        row = {"step": step, **metrics}
        self.file.write(json.dumps(row) + "\n")
        for logger in self.loggers:
            logger.write(step, metrics)

    def close(self) -> None:
        self.file.close()
        for logger in self.loggers:
            logger.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


class RunLog:
    """Prints and appends to RUN_DIR/train.log, so what happened (restarts, resumes) stays with the run."""

    def __init__(self, run_dir: Path, echo=print):
        from rlhf_dist.console import attach_run_log

        self.path, self.echo = run_dir / "train.log", echo
        attach_run_log(self.path)  # a quiet console sends library output here from now on

    def __call__(self, text: str) -> None:
        self.echo(text)
        with self.path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def write_config(run_dir: Path, cfg, resume, table: str | None = None) -> None:
    """config.yaml for a new run; a resumed run keeps it and writes its own config beside it. `table`: the
    derived values, kept beside it as derived.txt."""
    from rlhf_dist.config import to_yaml

    name = "config.yaml" if resume is None else f"config.resume-step{resume.step}.yaml"
    (run_dir / name).write_text(to_yaml(cfg))
    if table is not None:
        (run_dir / name.replace("config", "derived").replace(".yaml", ".txt")).write_text(table + "\n")


def set_aside_metrics_after(run_dir: Path, step: int) -> None:
    """Rows past the checkpoint belong to steps that will run again: move them to metrics.discarded.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            (keep if json.loads(line)["step"] <= step else drop).append(line)
    if drop:
        with (run_dir / "metrics.discarded.jsonl").open("a") as f:
            f.write("\n".join(drop) + "\n")
    path.write_text("".join(line + "\n" for line in keep))
