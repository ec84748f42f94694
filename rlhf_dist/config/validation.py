"""The checks every command's config gets before anything runs, beyond what the typed fields check:
paths marked InputFile or OutputDir in the config classes are checked for kind, readability and
writability, wherever they sit in the config tree (so a new field gets the checks by its type alone)."""
from __future__ import annotations

import os
import typing
from pathlib import Path

from pydantic import BaseModel

from rlhf_dist.config import ConfigError, PathKind


def _kinds(annotation, metadata) -> list[PathKind]:
    found = [m for m in metadata if isinstance(m, PathKind)]
    for arg in typing.get_args(annotation):
        found += _kinds(arg, getattr(arg, "__metadata__", ()))
    return found


def marked_paths(model: BaseModel, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, value, kind) for every set path field in the config tree."""
    out = []
    for name, info in type(model).model_fields.items():
        value, field = getattr(model, name), f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out += marked_paths(value, f"{field}.")
        elif isinstance(value, str):
            out += [(field, value, k.kind) for k in _kinds(info.annotation, info.metadata)]
    return out


def check_input_file(field: str, value: str) -> None:
    path = Path(value).expanduser()
    if value.strip() == "":
        raise ConfigError(f"{field}: empty path")
    if not path.exists():
        raise ConfigError(f"{field}: {value!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{field}: {value!r} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{field}: {value!r} cannot be read (permission denied)")


def check_config(cfg: BaseModel) -> None:
    """The validation layer every command's config passes: paths by kind (readable, writable), the device."""
    check_paths(cfg)
    check_local_device(cfg)
    check_loggers(cfg)


def check_loggers(cfg: BaseModel) -> None:
    """A logger that cannot start is refused before anything runs: wandb needs its package and, online, a key
    (without one, wandb.init waits at a login prompt after the actors have started)."""
    run = getattr(cfg, "run", None)
    if "wandb" not in (getattr(run, "loggers", None) or []):
        return
    import importlib.util
    import netrc

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("run.loggers: 'wandb' needs the wandb package: pip install 'rlhf-dist[wandb]'")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ConfigError("run.loggers: 'wandb' has no login here: set WANDB_API_KEY (or run `wandb login`), or WANDB_MODE=offline")


def check_local_device(cfg: BaseModel) -> None:
    """A local cluster's workers run on this machine: `cluster.device: cuda` without a CUDA device here, or a
    pool of more than one node, is refused before anything starts (a cluster elsewhere is named by
    cluster.address)."""
    cluster = getattr(cfg, "cluster", None)
    if cluster is None or cluster.address:
        return
    pools = getattr(getattr(cfg, "placement", None), "pools", None) or {}
    for name, pool in pools.items():
        if pool.nodes > 1:
            raise ConfigError(f"placement.pools.{name}.nodes: {pool.nodes} nodes, but without cluster.address the job starts "
                              "a local Ray cluster of one node (this machine); set cluster.address to a cluster with the nodes")
    if cluster.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("cluster.device: 'cuda', but this machine has no CUDA device and the local cluster runs "
                          "here (set cluster.address to use a GPU cluster, or device auto or cpu)")


def check_paths(cfg: BaseModel) -> None:
    """Raises ConfigError naming the first bad path field."""
    from rlhf_dist.outputs import check_output_dir

    for field, value, kind in marked_paths(cfg):
        if kind == "file":
            check_input_file(field, value)
        else:
            # A run directory that holds something is not overwritten: the run goes to OUTPUT_DIR-2, -3, ...
            check_output_dir(value, field, force=True)


_TOKEN_BYTES: dict[int, int] = {}


def surely_too_long(text: str, tokenizer, max_tokens: int, limit_name: str) -> str | None:
    """Without tokenizing: a text of more bytes than max_tokens times the longest vocabulary entry has more
    than max_tokens tokens, so an enormous line is refused before the tokenizer spends time on it."""
    key = id(tokenizer)
    if key not in _TOKEN_BYTES:
        _TOKEN_BYTES[key] = max((len(t.encode("utf-8")) for t in tokenizer.get_vocab()), default=1)
    room = max_tokens * _TOKEN_BYTES[key]
    size = len(text.encode("utf-8", "surrogatepass"))
    # Only far past the bound: a line just over it is tokenized, so its message gives the exact token count.
    if size > 4 * room:
        return f"{size} bytes, more than {limit_name}={max_tokens} tokens can hold (not tokenized)"
    return None
