"""What every command does around its loop: the run directory (fresh or resumed), the run's log and config,
metrics, Ray start-up and teardown."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from rlhf_dist.checkpoint import Checkpoint, complete_checkpoints, find_resume
from rlhf_dist.errors import ConfigError, NodeLost, RLHFError, WorkerDied
from rlhf_dist.metrics import RunLog, fresh_run_dir, write_config


@dataclasses.dataclass
class Run:
    dir: Path
    log: RunLog
    resume: Checkpoint | None


def open_run(cfg, log=print, resumable: bool = True, table: str | None = None) -> Run:
    """The run directory (the resumed run's, or a fresh one that never overwrites), its log and config.yaml
    (with `table`, the derived values, as derived.txt beside it)."""
    resume = find_resume(cfg) if resumable else None
    run_dir = resume.run_dir if resume else fresh_run_dir(cfg.run.output_dir)
    run_log = RunLog(run_dir, log)
    write_config(run_dir, cfg, resume, table)
    return Run(run_dir, run_log, resume)


def log_skipped(log, skipped: list[str], what: str = "bad lines") -> None:
    if skipped:
        shown = "\n  ".join(skipped[:5])
        log(f"skipped {len(skipped)} {what} (data.skip_bad_lines), first ones:\n  {shown}")


def init_ray(cfg, derived, log=print) -> bool:
    """Start or join Ray. Returns True if this call started it (and so should shut it down)."""
    import ray
    import torch

    from rlhf_dist.ray_start import join_remote_ray, start_local_ray

    if ray.is_initialized():
        return False
    if cfg.cluster.address:
        join_remote_ray(cfg.cluster.address, cfg.timeouts.actor_start_s)
        return True
    kwargs = {}
    if not torch.cuda.is_available():
        # No GPUs here: Ray's logical GPUs stand in, so the placement code runs unchanged.
        kwargs["num_gpus"] = derived.total_gpus
        log(f"no CUDA device: local Ray with {derived.total_gpus} logical GPUs")
    # Loopback only, with token authentication; the job's own process groups stay on loopback too.
    start_local_ray(log_to_driver=True, **kwargs)
    return True


@contextlib.contextmanager
def ray_session(cfg, derived, log=print):
    """Ray for the duration of a command: started here (and shut down on the way out) unless already running."""
    started = init_ray(cfg, derived, log)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def with_restarts(session, resume: Checkpoint | None, run_dir: Path, max_restarts: int, log):
    """Run `session(resume)`; when a worker dies (or its node is lost) and restarts are allowed, run it again
    (every actor group started afresh, placed on the nodes alive now) from the last complete checkpoint. When no
    restart is left, or the cluster can no longer hold the layout, stop with the command that resumes."""
    restarts, died = 0, None
    while True:
        try:
            return session(resume)
        except WorkerDied as e:
            log(f"{'node lost' if isinstance(e, NodeLost) else 'worker died'}: {e}")
            died = e
            if restarts >= max_restarts:
                raise type(e)(f"{e}; {resume_hint(run_dir)}") from e
            restarts += 1
            done = complete_checkpoints(run_dir)
            resume = done[-1] if done else None
            where = f"checkpoint step {resume.step}" if resume else "the start (no checkpoint yet)"
            log(f"restart {restarts}/{max_restarts}: restarting all actor groups, resuming from {where}")
        except ConfigError as e:
            if died is None:
                raise
            # The restart's fit check: the nodes left cannot hold the pools.
            raise RLHFError(f"{died}; the cluster left cannot hold the layout ({e}); {resume_hint(run_dir)}") from e


def resume_hint(run_dir: Path) -> str:
    """How to continue once the cluster can hold the job again: no trained step is lost past the checkpoint."""
    done = complete_checkpoints(run_dir)
    if not done:
        return "no checkpoint yet: run the same command again to start over"
    return f"resume with the same command and resume={done[-1].path} (steps after {done[-1].step} run again)"
