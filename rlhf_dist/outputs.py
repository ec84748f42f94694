"""Output directories a command writes: never over an existing one unless forced, never left half-written.

The content is written into a hidden temporary sibling and renamed into place at the end, so a failure
leaves nothing at the requested path (and the temporary directory is removed).
"""
from __future__ import annotations

import contextlib
import errno
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
    with _swapped_in(out) as tmp:
        yield tmp


@contextlib.contextmanager
def _swapped_in(out: Path, mode: int | None = None):
    """A new temporary sibling of `out`, yielded to be filled; it replaces `out` on success and is removed on
    failure (leaving `out` as it was)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    if mode is not None:
        tmp.chmod(mode)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)


def remove(path: Path) -> None:
    """Remove a run's own file or directory; a link there is unlinked, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def swap_in(tmp: Path, out: Path) -> None:
    """`tmp` takes `out`'s place; the old `out` (if any) is renamed aside first, then removed (its links
    unlinked, never followed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def fresh_owned_dir(path: str | Path, owner: Path):
    """A directory the run writes whole under `owner` (final/): filled in a new temporary sibling that then
    replaces it, so nothing is written through a link planted in the old one (a library's save_pretrained
    opens files by name and would follow it). On failure the old directory is left as it was."""
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{path}: is a symbolic link; refusing to write into it (remove the link)")
    inside(path.parent, owner, str(path))
    with _swapped_in(path, mode=0o755) as tmp:  # mkdtemp's 0700 would hide the saved model from other accounts
        yield tmp


# --- files: the one rule for every file the project writes ---
# A file is written whole or not at all (a temporary file beside it, renamed over it), so a symbolic link at its
# path is replaced, never followed: whatever the link pointed at is left as it was. Appends (logs, metrics)
# refuse a link. A file at a path the user named is never replaced unless forced (`check_new_file`).


def check_new_file(path: str | Path, field: str, force: bool = False, flag: str = "--force") -> Path:
    """`path` may be written: nothing is there (not even a dangling link) unless forced, it is not a directory,
    and its parent is writable."""
    if str(path).strip() == "":
        raise ConfigError(f"{field}: empty path")
    out = Path(path).expanduser()
    if out.is_dir() and not out.is_symlink():
        raise ConfigError(f"{field}: {str(out)!r} is a directory, not a file")
    if os.path.lexists(out) and not force:
        kind = "a symbolic link" if out.is_symlink() else "a file"
        raise ConfigError(f"{field}: {str(out)!r} already exists ({kind}); pass {flag} to replace it, or choose a new path")
    writable_parent(out, field)
    return out


def inside(path: Path, owner: Path, what: str) -> None:
    """`path` must not lead out of `owner` through a symbolic link."""
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(owner))
    if real != root and root not in real.parents:
        raise ConfigError(f"{what}: {str(path)!r} leads outside {str(owner)!r} through a symbolic link; refusing to write there")


def write_file(path: str | Path, data: str | bytes, owner: Path | None = None) -> Path:
    """Write `data` to `path` atomically, replacing (never following) a link there. `owner`: the directory the
    file belongs to, which its parent must not lead out of."""
    path = Path(path)
    if owner is not None:
        inside(path.parent, owner, str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def open_append(path: str | Path):
    """A text file opened for appending, line-buffered, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{path}: is a symbolic link; refusing to append through it (remove the link)") from None
        raise
    return os.fdopen(fd, "a", buffering=1)


def owned_dir(path: str | Path, owner: Path) -> Path:
    """A directory the run creates or reuses under `owner` (final/, tensorboard/, checkpoints/): not a link out."""
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{path}: is a symbolic link; refusing to write into it (remove the link)")
    inside(path, owner, str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path
