"""The quiet console: library output (Python prints, warnings, C-level writes, child processes) goes to the
run's train.log; the terminal shows only the run's own lines and the progress."""
import subprocess
import sys
import textwrap
from pathlib import Path

from rlhf_dist.console import StepProgress, step_line

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from rlhf_dist.console import attach_run_log, echo, quiet
    from rlhf_dist.metrics import RunLog
    from pathlib import Path

    run_dir = Path(sys.argv[1])
    with quiet(sys.argv[2] == "quiet"):
        print("library print before the run directory exists")
        logging.getLogger("vllm").warning("a library warning")
        log = RunLog(run_dir, echo)  # the run directory is known: held output goes to train.log
        warnings.warn("a deprecation warning", DeprecationWarning, stacklevel=1)
        os.write(2, b"C-level write to fd 2\\n")
        subprocess.run([sys.executable, "-c", "print('a child process line')"], check=True)
        log("step 1: ours")
    print("after the block: back on the terminal")
""")


def run(tmp_path, mode):
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT, str(tmp_path), mode], cwd=ROOT, capture_output=True,
        text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr, (tmp_path / "train.log").read_text()


LIBRARY = ["library print before", "a library warning", "a deprecation warning", "C-level write", "a child process line"]


def test_quiet_console_sends_library_output_to_train_log(tmp_path):
    console, log = run(tmp_path, "quiet")
    assert console.splitlines() == ["step 1: ours", "after the block: back on the terminal"]
    for text in LIBRARY + ["step 1: ours"]:
        assert text in log, text


def test_verbose_console_shows_everything(tmp_path):
    console, log = run(tmp_path, "verbose")
    for text in LIBRARY + ["step 1: ours"]:
        assert text in console, text
    assert "step 1: ours" in log and "a library warning" not in log


def test_progress_lines_when_not_on_a_terminal():
    lines = []
    p = StepProgress(1, 4, enabled=True, log=lines.append, every_s=0.0)  # pytest's stderr is not a terminal
    assert p.bar is None
    for step in range(1, 5):
        p.update(step)
    assert len(lines) == 4 and lines[-1].startswith("progress: step 4/4 (100%), ") and "ETA 0m00s" in lines[-1]
    quiet_lines = []
    p = StepProgress(3, 10, enabled=True, log=quiet_lines.append, every_s=3600)
    for step in range(3, 11):
        p.update(step)
    assert [line.split(",")[0] for line in quiet_lines] == ["progress: step 10/10 (100%)"]  # only at the end


def test_step_line_shows_eval_and_lr():
    m = {"reward/mean": 0.5, "kl/mean": 0.01, "response/length_mean": 3.0, "timing/step": 1.25, "sync/seconds": 0.02,
         "policy/lr": 1e-3, "eval/sampled/pass@1": 0.25, "eval/sampled/pass@8": 0.75, "eval/seconds": 2.0}
    assert step_line(7, m) == (
        "step 7: reward 0.500 kl 0.0100 len 3.0 step 1.2s sync 0.02s lr 1.00e-03 | eval sampled/pass@1 0.250 sampled/pass@8 0.750"
    )


def test_a_second_run_log_takes_over_like_a_pipeline_stage(tmp_path):
    """`rlhf-dist pipeline` runs several stages in one quiet console: each stage's run log takes the library
    output from then on, and what the first stage's libraries wrote stays in the first log (attaching a
    second log used to fail reading the first, which is open for writing only)."""
    script = textwrap.dedent("""
        import os, sys
        from rlhf_dist.console import echo, quiet
        from rlhf_dist.metrics import RunLog
        from pathlib import Path

        for stage in ("sft", "rm"):
            (Path(sys.argv[1]) / stage).mkdir()
        with quiet(True):
            print("held before any run directory")
            RunLog(Path(sys.argv[1]) / "sft", echo)
            os.write(2, b"written during the first stage\\n")
            RunLog(Path(sys.argv[1]) / "rm", echo)
            os.write(2, b"written during the second stage\\n")
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    first, second = (tmp_path / "sft" / "train.log").read_text(), (tmp_path / "rm" / "train.log").read_text()
    assert "held before any run directory" in first and "written during the first stage" in first
    assert "written during the second stage" in second and "first stage" not in second
