"""Run directory, metrics.jsonl, TensorBoard events."""
from __future__ import annotations

import json
import math
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
    def __init__(self, run_dir: Path, tensorboard: bool):
        self.file = (run_dir / "metrics.jsonl").open("a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        row = {"step": step, **metrics}
        self.file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
