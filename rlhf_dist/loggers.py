"""Metric loggers chosen by `run.loggers`: jsonl (always written: resume and `rlhf-dist report` read it),
TensorBoard, and Weights & Biases (optional extra: `pip install .[wandb]`; WANDB_MODE=offline works without a
network). Each gets the run's config and derived values once, then one row of scalars per step."""
from __future__ import annotations

import math
import uuid
from pathlib import Path

from rlhf_dist.outputs import owned_dir, write_file

NAMES = ("jsonl", "tensorboard", "wandb")


def active_loggers(run) -> list[str]:
    """`run.loggers`, or, when it is not set, jsonl plus TensorBoard as `run.tensorboard` says."""
    if run.loggers is not None:
        names = list(dict.fromkeys(["jsonl", *run.loggers]))
    else:
        names = ["jsonl"] + (["tensorboard"] if run.tensorboard else [])
    return names


def scalars(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardLogger:
    def __init__(self, run_dir: Path, record: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(owned_dir(run_dir / "tensorboard", run_dir)))
        if "derived_table" in record:
            self.tb.add_text("derived", "```\n" + record["derived_table"] + "\n```", 0)

    def write(self, step: int, metrics: dict) -> None:
        for k, v in scalars(metrics).items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.tb.close()


class WandbLogger:
    """One W&B run per run directory: its id is kept in RUN_DIR/wandb_id, so a resumed run continues it."""

    def __init__(self, run_dir: Path, record: dict, project: str, name: str):
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        write_file(id_file, run_id, owner=run_dir)
        self.run = wandb.init(
            project=project, name=name, id=run_id, resume="allow", dir=str(run_dir), config=record,
            settings=wandb.Settings(console="off", silent=True),
        )

    def write(self, step: int, metrics: dict) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def open_loggers(run_dir: Path, run, record: dict) -> list:
    out = []
    for name in active_loggers(run):
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir, record))
        elif name == "wandb":
            out.append(WandbLogger(run_dir, record, run.wandb_project, run.name))
    return out
