"""Run directory, metrics.jsonl, TensorBoard events."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rlhf_dist.outputs import open_append, write_file


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

        self.file = open_append(run_dir / "metrics.jsonl")
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
    return metric_rows(Path(run_dir) / "metrics.jsonl")[0]


def metric_rows(path: Path) -> tuple[list[dict], str | None]:
    """The rows of a metrics.jsonl, and the partial last line a killed run can leave (not a row: the write was
    cut off), if any. Any other line that is not a JSON object with an integer step is an error naming it."""
    from rlhf_dist.config import ConfigError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    lines = text.split("\n")
    partial = None
    if lines and lines[-1].strip():  # no newline after the last line: the writer was stopped mid-row
        try:
            json.loads(lines[-1])
        except ValueError:
            partial = lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise ConfigError(f"{path}:{i}: not valid JSON") from None
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise ConfigError(f"{path}:{i}: a row must be a JSON object with an integer 'step'")
        rows.append(row)
    return rows, partial


class RunLog:
    """Prints and appends to RUN_DIR/train.log, so what happened (restarts, resumes) stays with the run."""

    def __init__(self, run_dir: Path, echo=print):
        from rlhf_dist.console import attach_run_log

        self.path, self.echo = run_dir / "train.log", echo
        attach_run_log(self.path)  # a quiet console sends library output here from now on

    def __call__(self, text: str) -> None:
        self.echo(text)
        with open_append(self.path) as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def write_config(run_dir: Path, cfg, resume, table: str | None = None) -> None:
    """config.yaml for a new run; a resumed run keeps it and writes its own config beside it. `table`: the
    derived values, kept beside it as derived.txt."""
    from rlhf_dist.config import to_yaml

    name = "config.yaml" if resume is None else f"config.resume-step{resume.step}.yaml"
    write_file(run_dir / name, to_yaml(cfg), owner=run_dir)
    if table is not None:
        write_file(run_dir / name.replace("config", "derived").replace(".yaml", ".txt"), table + "\n", owner=run_dir)


def set_aside_metrics_after(run_dir: Path, step: int) -> None:
    """Rows past the checkpoint belong to steps that will run again: move them to metrics.discarded.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    rows, partial = metric_rows(path)
    keep = [json.dumps(r) for r in rows if r["step"] <= step]
    drop = [json.dumps(r) for r in rows if r["step"] > step] + ([partial] if partial is not None else [])
    if drop:
        with open_append(run_dir / "metrics.discarded.jsonl") as f:
            f.write("\n".join(drop) + "\n")
    write_file(path, "".join(line + "\n" for line in keep), owner=run_dir)
