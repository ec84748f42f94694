"""Checkpoints of a run: atomic (written to a temporary directory, then renamed), the last N kept.

    RUN_DIR/checkpoints/step_00000010/
        policy/, critic/      DeepSpeed checkpoints (weights, ZeRO-partitioned optimizer states, per-rank RNG)
        trainer.json          step, data-loader position, KL controller, weight-sync version
        COMPLETE              written last; a directory without it is never resumed from
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from rlhf_dist.config import Config, ConfigError
from rlhf_dist.outputs import owned_dir, remove

MARKER = "COMPLETE"
STEP_NAME = re.compile(r"step_\d+")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    run_dir: Path
    path: Path
    step: int


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def at(path: str | Path, field: str = "resume") -> Checkpoint:
    """The checkpoint in directory `path`; a ConfigError naming `field` unless it is complete."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise ConfigError(f"{field}: {str(path)!r} is not a complete checkpoint directory (no {MARKER} file)")
    if not STEP_NAME.fullmatch(path.name):
        raise ConfigError(f"{field}: {str(path)!r} is not named step_N (checkpoints are RUN_DIR/checkpoints/step_N)")
    run_dir = path.parent.parent
    if path.parent.name != "checkpoints" or not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{field}: {str(run_dir / 'config.yaml')!r} does not exist: a checkpoint is read with its run's config "
            "(checkpoints are RUN_DIR/checkpoints/step_N)"
        )
    return Checkpoint(run_dir, path, int(path.name.removeprefix("step_")))


def verified(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` once every file in it has passed a weights-only load (before any actor reads it)."""
    from rlhf_dist import safe_load

    safe_load.check_files(ckpt.path)
    return ckpt


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and (p / MARKER).is_file():
            found.append(Checkpoint(run_dir, p, int(p.name.removeprefix("step_"))))
    return sorted(found, key=lambda c: c.step)


def find_resume(cfg: Config) -> Checkpoint | None:
    """The checkpoint `cfg.resume` asks for; None if no resume was asked. Raises naming what was searched."""
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return verified(at(cfg.resume))
    base = Path(cfg.run.output_dir)
    candidates = [base] + sorted(base.parent.glob(f"{base.name}-*")) if base.parent.is_dir() else []
    newest = [c[-1] for c in (complete_checkpoints(d) for d in candidates) if c]
    if not newest:
        raise ConfigError(f"resume=auto: no complete checkpoint under {base} (or {base.name}-N beside it)")
    return verified(max(newest, key=lambda c: (c.path / MARKER).stat().st_mtime))


def save(cluster, trainer_state: dict, run_dir: Path, step: int, keep_last: int, tensors: dict | None = None) -> Path:
    """`cluster` saves every learner rank's state into the directory; `tensors` (name -> tensor) are written
    beside trainer.json. The directory counts only once its COMPLETE marker is written, last."""
    final = checkpoint_dir(run_dir, step)
    owned_dir(final.parent, run_dir)  # RUN_DIR/checkpoints may not lead elsewhere through a link
    tmp = final.with_name(final.name + ".tmp")
    remove(tmp)  # a killed save's leftovers (or a link planted there: unlinked, never followed)
    tmp.mkdir(parents=True)
    cluster.save_checkpoint(str(tmp))
    (tmp / "trainer.json").write_text(json.dumps(trainer_state))
    if tensors:
        import torch

        torch.save(tensors, tmp / "tensors.pt")
    (tmp / MARKER).write_text(str(step))
    remove(final)
    tmp.rename(final)
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        remove(old.path)
    return final


def load_trainer_state(ckpt: Checkpoint) -> dict:
    return json.loads((ckpt.path / "trainer.json").read_text())


def load_tensors(ckpt: Checkpoint) -> dict:
    from rlhf_dist import safe_load

    path = ckpt.path / "tensors.pt"
    return safe_load.load(path) if path.is_file() else {}
