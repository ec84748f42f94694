"""Checkpoint files are read as data, never run as code.

Every torch.load of a checkpoint file is weights-only: plain tensors, numbers, strings and containers, plus
the few plain-data DeepSpeed classes its checkpoints hold (allow-listed below). DeepSpeed's own loaders pass
weights_only=False; inside `weights_only_loads()` torch is told to ignore that (TORCH_FORCE_WEIGHTS_ONLY_LOAD),
so a crafted file is refused there too.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

from rlhf_dist.config import ConfigError

_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# (module, class): plain-data classes found in DeepSpeed ZeRO 0-3 checkpoints (fp32/bf16/fp16).
_DEEPSPEED_DATA = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


class UnsafeCheckpoint(ConfigError):
    """A checkpoint file that a weights-only load refuses (it would construct or call something)."""


def allowed_globals() -> list:
    import importlib

    found = []
    for module, name in _DEEPSPEED_DATA:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # a DeepSpeed without the class cannot have written it
    return found


def refusal(path, err: BaseException) -> UnsafeCheckpoint:
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f"it calls {m.group(1)}" if m else "it is not plain tensor data"
    return UnsafeCheckpoint(f"{path}: refused to unpickle ({what}, which a weights-only load does not allow; "
                            "checkpoint files are read as data, never run)")


@contextlib.contextmanager
def weights_only_loads(what: str = "checkpoint"):
    """Every torch.load inside, DeepSpeed's included, is weights-only; a refused file raises UnsafeCheckpoint."""
    import torch

    old = os.environ.get(_FORCE)
    os.environ[_FORCE] = "1"
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    except pickle.UnpicklingError as e:
        raise refusal(what, e) from None
    finally:
        if old is None:
            os.environ.pop(_FORCE, None)
        else:
            os.environ[_FORCE] = old


def load(path: str | Path, mmap: bool = False):
    """torch.load of one file, weights-only; UnsafeCheckpoint naming the file if refused."""
    import torch

    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise refusal(path, e) from None
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # a legacy (non-zip) file cannot be memory-mapped: read it whole
            return load(path, mmap=False)
        raise ConfigError(f"{path}: not a readable checkpoint file ({str(e).splitlines()[0][:200]})") from None
    except (EOFError, OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable checkpoint file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def check_files(directory: str | Path) -> int:
    """Weights-only load of every .pt file under `directory` (memory-mapped: tensors are not read); returns
    how many. Run before any actor loads the checkpoint, so a crafted file stops the command in one line."""
    files = sorted(Path(directory).rglob("*.pt"))
    for f in files:
        load(f, mmap=True)
    return len(files)
