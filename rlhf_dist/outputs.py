"""Output directories a command writes: never over an existing one unless forced, never left half-written.

The content is written into a hidden temporary sibling and renamed into place at the end, so a failure
leaves nothing at the requested path (and the temporary directory is removed).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from rlhf_dist.config import ConfigError


def writable_parent(path: Path, field: str) -> Path:
    """The nearest existing ancestor of `path`, which must be a directory this process can write in."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{field}: {str(parent)!r} is a file, so {str(path)!r} cannot be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: cannot write in {str(parent)!r} (permission denied)")
    return parent


def check_output_dir(path: str | Path, field: str, force: bool = False, flag: str = "--force") -> Path:
    """`path` may be created (or, with force, replaced): it is not a file, not a non-empty directory unless
    forced, and its parent is writable."""
    if str(path).strip() == "":
        raise ConfigError(f"{field}: empty path")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{field}: {str(out)!r} is a file, not a directory")
    if out.is_dir():
        if any(out.iterdir()) and not force:
            raise ConfigError(f"{field}: {str(out)!r} already exists and is not empty; pass {flag} to replace it")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}: cannot write in {str(out)!r} (permission denied)")
    writable_parent(out, field)
    return out


@contextlib.contextmanager
def atomic_dir(path: str | Path, field: str, force: bool = False):
    """Yields a temporary directory beside `path`; on success it replaces `path` (removed first when
    forced), on failure it is removed and `path` is left as it was."""
    out = check_output_dir(path, field, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
