"""A quiet console: what the libraries print (vLLM, Ray, DeepSpeed, transformers, Python warnings) goes to the
run's train.log, and the terminal shows only the run's own lines, one line per step and a progress bar with
an ETA (a periodic plain progress line when the output is not a terminal). `--verbose` turns this off.

The redirection is at the file-descriptor level, so output written by C extensions and forwarded from Ray
workers is caught too. Until the run directory exists, the output is held in a temporary file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

_active: "QuietConsole | None" = None


class QuietConsole:
    def __init__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(1), "w", buffering=1)
        self._target = tempfile.TemporaryFile()
        self._held = True  # output is held in the temporary file until the first run log is attached
        self._point(self._target.fileno())

    def _point(self, fd: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def attach(self, log_path) -> None:
        """From now on library output goes to `log_path` (appended), after what was held so far. A later
        attach (the next stage of a pipeline) moves on to that run's log: what came before stays in the
        previous one."""
        target = open(log_path, "ab")
        sys.stdout.flush()
        sys.stderr.flush()
        if self._held:
            self._target.seek(0)
            shutil.copyfileobj(self._target, target)
            target.flush()
        self._point(target.fileno())
        self._target.close()
        self._target, self._held = target, False

    def echo(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.terminal)  # above the progress bar, if one is drawn

    def restore(self) -> None:
        self._point(self._saved[0])
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._target.close()
        self.terminal.close()


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Within the block, library output goes to the run's train.log (see `attach_run_log`)."""
    global _active
    if not enabled or _active is not None:
        yield None
        return
    _active = QuietConsole()
    try:
        yield _active
    finally:
        _active.restore()
        _active = None


_run_log = None  # the train.log attached last, where a failed command writes its traceback


def attach_run_log(log_path) -> None:
    """Called once the run directory is known: a quiet console sends library output there from now on."""
    global _run_log
    _run_log = log_path
    if _active is not None:
        _active.attach(log_path)


def forget_run_log() -> None:
    global _run_log
    _run_log = None


def log_failure(e: BaseException, verbose: bool) -> str:
    """Writes a failed command's tracebacks (the worker's, where the error came from one, then the driver's) to
    the run's train.log; returns the note for the console line. With --verbose they go to stderr too; without a
    run log the note says how to see them."""
    import traceback

    text = "".join(traceback.format_exception(e))
    details = getattr(e, "details", None)
    if details:
        text = f"{details}\n\n{text}"
    note = ""
    if _run_log is not None:
        from rlhf_dist.outputs import open_append

        with open_append(_run_log) as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} error: {type(e).__name__}: {e}\n{text}\n")
        note = f" (traceback in {_run_log})"
    elif not verbose and details:
        note = " (--verbose shows the traceback)"
    if verbose:
        sys.stderr.write(text)
    return note


def echo(text: str) -> None:
    """Print a line of the run's own to the terminal (through the quiet console, when one is active)."""
    if _active is not None:
        _active.echo(text)
    else:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)  # above a progress bar drawn on stderr
        sys.stdout.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class StepProgress:
    """A tqdm bar with ETA on a terminal; elsewhere a plain progress line every `every_s` seconds (and at the
    end), so logs and CI show the run's pace too."""

    def __init__(self, first: int, last: int, enabled: bool, log, every_s: float = 60.0):
        self.first, self.last, self.log, self.every_s = first, last, log, every_s
        self.t0 = self.shown = time.monotonic()
        out = _active.terminal if _active is not None else sys.stderr
        self.bar = None
        if enabled and out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=last - first + 1, desc="train", unit="step", dynamic_ncols=True, file=out)

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.shown >= self.every_s or step == self.last:
            self.shown = now
            done = step - self.first + 1
            total = self.last - self.first + 1
            eta = (now - self.t0) / done * (total - done)
            self.log(f"progress: step {step}/{self.last} ({100 * done / total:.0f}%), {_duration(now - self.t0)} elapsed, ETA {_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def step_line(step: int, m: dict) -> str:
    text = (
        f"step {step}: reward {m['reward/mean']:.3f} kl {_kl(m)} len {m['response/length_mean']:.1f} "
        f"step {m['timing/step']:.1f}s sync {m['sync/seconds']:.2f}s"
    )
    if "policy/lr" in m:
        text += f" lr {m['policy/lr']:.2e}"
    evals = eval_metrics_brief(m)
    return text + (f" | eval {evals}" if evals else "")


def _kl(m: dict) -> str:
    return f"{m['kl/mean']:.4f}" if "kl/mean" in m else "not computed"  # no reference runs without a KL term


def headline_keys(keys) -> list[str]:
    """The eval metrics worth a glance: pass@k and reward-model scores; without pass@k, each reward mean."""
    keys = [k for k in keys if k.startswith(("eval/greedy/", "eval/sampled/"))]
    shown = [k for k in keys if "pass@" in k or k.endswith("/reward_model")]
    if not any("pass@" in k for k in shown):
        shown = [k for k in keys if not k.endswith(("/response_length", "/truncated_fraction"))]
    return shown


def eval_metrics_brief(m: dict) -> str:
    return " ".join(f"{k.removeprefix('eval/')} {m[k]:.3f}" for k in headline_keys(m))
