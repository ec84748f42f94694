"""Checkpoint files are read as data, never run; outputs never replace a user's directory unless forced and are
never left half-written."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from rlhf_dist.commands.cli import main

from tests.conftest import demo_config_dict


class Payload:
    """Unpickling this creates the marker file: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_checkpoint(tmp_path: Path, model: str, file: str) -> tuple[Path, Path]:
    """A complete-looking checkpoint of a run whose `file` (under policy/state) carries the payload."""
    run = tmp_path / "victim"
    ckpt = run / "checkpoints" / "step_00000001"
    (ckpt / "policy" / "state").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"policy": model}}))
    (ckpt / "COMPLETE").write_text("1")
    (ckpt / "trainer.json").write_text(json.dumps({"step": 1}))
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": Payload(marker)}, ckpt / "policy" / "state" / file)
    return ckpt, marker


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("file", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_export_refuses_a_crafted_checkpoint(tiny_model, tmp_path, capsys, file):
    ckpt, marker = crafted_checkpoint(tmp_path, tiny_model, file)
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 2
    err = one_line_error(capsys)
    assert f"{file}: refused to unpickle (it calls io.open" in err, err
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_deepspeeds_own_reader_is_weights_only_too(tiny_model, tmp_path):
    """Past the pre-check, DeepSpeed's zero_to_fp32 (which asks torch for weights_only=False) still refuses."""
    from rlhf_dist.commands.export import consolidated_state_dict
    from rlhf_dist.safe_load import UnsafeCheckpoint

    ckpt, marker = crafted_checkpoint(tmp_path, tiny_model, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"module": {}, "x": Payload(marker)}, ckpt / "policy" / "state" / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    with pytest.raises(UnsafeCheckpoint, match="refused to unpickle"):
        consolidated_state_dict(ckpt / "policy")
    assert not marker.exists()
    import os

    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the block


def test_resume_refuses_a_crafted_checkpoint_before_anything_starts(tiny_model, tmp_path, capsys):
    ckpt, marker = crafted_checkpoint(tmp_path, tiny_model, "mp_rank_00_model_states.pt")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the red cat"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(demo_config_dict(tiny_model, str(prompts), str(tmp_path / "run"))))
    assert main(["train", str(cfg), f"resume={ckpt}"]) == 2
    assert "mp_rank_00_model_states.pt: refused to unpickle" in one_line_error(capsys)
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_make_tiny_model_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["make-tiny-model", str(out)]) == 2
    assert "out_dir: " in one_line_error(capsys) and (out / "mine.txt").read_text() == "keep"
    assert main(["make-tiny-model", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "mine.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or set-aside directory left


def test_a_failed_write_leaves_no_half_written_directory(tmp_path):
    from rlhf_dist.data.tiny import make_tiny_model

    with pytest.raises(ValueError):
        make_tiny_model(tmp_path / "m", seed="not-a-seed")  # fails after the tokenizer is written
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites_without_force(tiny_model, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "model.safetensors").write_text("someone's model")
    ckpt, _ = crafted_checkpoint(tmp_path, tiny_model, "mp_rank_00_model_states.pt")
    assert main(["export", str(ckpt), str(out)]) == 2
    assert "pass --force to replace it" in one_line_error(capsys)
    assert (out / "model.safetensors").read_text() == "someone's model"


def test_export_of_a_clean_stage0_checkpoint_round_trips(tiny_model, tmp_path):
    """Weights-only loading still reads what the learners write (a stage-0 module state)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_00000003"
    (ckpt / "policy" / "state").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"policy": tiny_model}}))
    (ckpt / "COMPLETE").write_text("3")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    state = {k: v + 1.0 for k, v in model.state_dict().items()}
    torch.save({"module": state, "ds_version": "x", "global_steps": 3}, ckpt / "policy" / "state" / "mp_rank_00_model_states.pt")
    (tmp_path / "hf").mkdir()  # an existing empty directory may be written
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    got = load_file(tmp_path / "hf" / "model.safetensors")
    assert torch.equal(got["model.embed_tokens.weight"], state["model.embed_tokens.weight"])


# --- the one rule for files: never through a link, never over a user's file unless forced, whole or not at all ---

def planted(tmp_path: Path, name: str) -> tuple[Path, Path, bytes]:
    """A run directory whose `name` is a link to a user's file elsewhere: (run dir, the user's file, its bytes)."""
    run, mine = tmp_path / "run", tmp_path / "elsewhere" / "precious.txt"
    run.mkdir(exist_ok=True)
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(b"the user's own file\n")
    (run / name).symlink_to(mine)
    return run, mine, mine.read_bytes()


def test_a_run_file_written_whole_replaces_a_planted_link_and_leaves_its_target(tiny_model, tmp_path):
    from rlhf_dist.config import load_config
    from rlhf_dist.metrics import set_aside_metrics_after, write_config

    run, mine, before = planted(tmp_path, "config.yaml")
    cfg = load_config(None, base=demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(run)))
    write_config(run, cfg, None, table="t")
    assert mine.read_bytes() == before and not (run / "config.yaml").is_symlink()
    assert tiny_model in (run / "config.yaml").read_text()
    # Resume rewrites metrics.jsonl without the steps that run again: the link is replaced, its target kept.
    run, mine, before = planted(tmp_path, "metrics.jsonl")
    mine.write_text('{"step": 1}\n{"step": 2}\n')
    before = mine.read_bytes()
    set_aside_metrics_after(run, 1)
    assert mine.read_bytes() == before and (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("name", ["metrics.jsonl", "train.log"])
def test_appends_refuse_a_planted_link(tmp_path, name):
    from rlhf_dist.config import ConfigError, RunConfig
    from rlhf_dist.metrics import MetricsWriter, RunLog

    run, mine, before = planted(tmp_path, name)
    with pytest.raises(ConfigError, match="is a symbolic link; refusing to append through it"):
        if name == "metrics.jsonl":
            MetricsWriter(run, RunConfig(tensorboard=False))
        else:
            RunLog(run, echo=lambda _: None)("a line")
    assert mine.read_bytes() == before


@pytest.mark.parametrize("name", ["checkpoints", "final", "tensorboard"])
def test_run_directories_that_lead_elsewhere_are_refused(tmp_path, name):
    from rlhf_dist import checkpoint
    from rlhf_dist.config import ConfigError, RunConfig
    from rlhf_dist.metrics import MetricsWriter
    from rlhf_dist.outputs import fresh_owned_dir

    run, elsewhere = tmp_path / "run", tmp_path / "users-dir"
    run.mkdir()
    elsewhere.mkdir()
    (run / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match="is a symbolic link; refusing to write into it"):
        if name == "checkpoints":
            checkpoint.save(None, {"step": 1}, run, 1, keep_last=1)
        elif name == "tensorboard":
            MetricsWriter(run, RunConfig(loggers=["tensorboard"]))
        else:
            with fresh_owned_dir(run / name, run):
                pass
    assert list(elsewhere.iterdir()) == []


def test_a_saved_model_directory_is_written_fresh_so_links_planted_in_the_old_one_are_never_followed(tmp_path):
    """final/ is saved again on resume by save_pretrained, which opens files by name: it is filled in a new
    directory that replaces the old one, so a link planted in final/ (or a leftover of the old save) is
    dropped and the user's file it points at is left as it was."""
    from rlhf_dist.outputs import fresh_owned_dir

    run, mine, before = planted(tmp_path, "unused")
    (run / "final").mkdir()
    (run / "final" / "config.json").symlink_to(mine)
    (run / "final" / "stale.bin").write_bytes(b"old")
    with fresh_owned_dir(run / "final", run) as final:
        (final / "config.json").write_text("{}")  # what save_pretrained does: open(path, "w")
    assert mine.read_bytes() == before
    assert sorted(p.name for p in (run / "final").iterdir()) == ["config.json"]
    assert (run / "final" / "config.json").read_text() == "{}" and oct((run / "final").stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in run.iterdir()) == ["final", "unused"]  # no temporary directory left behind
    # A save that fails leaves the old directory as it was.
    with pytest.raises(RuntimeError), fresh_owned_dir(run / "final", run) as final:
        (final / "half").write_text("x")
        raise RuntimeError("the save failed")
    assert sorted(p.name for p in (run / "final").iterdir()) == ["config.json"] and sorted(p.name for p in run.iterdir()) == ["final", "unused"]


def test_a_checkpoint_save_unlinks_links_planted_where_it_writes(tmp_path):
    from rlhf_dist import checkpoint

    class Saves:  # the cluster's part of a save: every rank writes its files into the directory it is given
        def save_checkpoint(self, path):
            Path(path, "model.pt").write_bytes(b"weights")

    run, elsewhere = tmp_path / "run", tmp_path / "users-dir"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002.tmp").symlink_to(elsewhere, target_is_directory=True)
    (run / "checkpoints" / "step_00000002").symlink_to(elsewhere, target_is_directory=True)
    path = checkpoint.save(Saves(), {"step": 2}, run, 2, keep_last=1)
    assert not path.is_symlink() and (path / "model.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"] and (elsewhere / "keep.txt").read_text() == "mine"


def test_report_replaces_its_own_default_output_but_never_a_user_file(tmp_path, capsys):
    run, mine, before = planted(tmp_path, "report.png")
    (run / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.1}\n{"step": 2, "reward/mean": 0.4}\n{"step": 3, "rew')
    assert main(["report", str(run)]) == 0
    assert mine.read_bytes() == before and (run / "report.png").read_bytes()[:4] == b"\x89PNG"
    # A killed run's cut-off last line is left out, and said so; the rows before it are drawn.
    assert "left out its last line, cut off mid-row" in capsys.readouterr().err
    assert "steps logged: 0" in (run / "report.md").read_text()  # no timing/step rows in this file
    # A named --out that exists is replaced only with --force, and then whole (a link there is replaced, not followed).
    out = tmp_path / "mine.png"
    out.symlink_to(mine)
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert main(["report", str(run), "--out", str(out), "--force"]) == 0
    assert mine.read_bytes() == before and not out.is_symlink() and out.read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(run), "--out", str(tmp_path / "fig.svg")]) == 0
    assert b"<svg" in (tmp_path / "fig.svg").read_bytes()[:400]


def test_resume_sets_a_cut_off_last_line_aside_with_the_steps_that_run_again(tmp_path):
    from rlhf_dist.metrics import set_aside_metrics_after

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    set_aside_metrics_after(tmp_path, 1)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (tmp_path / "metrics.discarded.jsonl").read_text() == '{"step": 2}\n{"step": 3, "rew\n'


def test_a_large_field_the_stage_never_reads_is_not_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from rlhf_dist.config.stages import StageData
    from rlhf_dist.data.stage_data import load_examples

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the red cat", "response": " runs", "notes": "x" * 1_000_000}) + "\n")
    cfg = StageData(train=str(data), max_length=32)
    ex = load_examples(str(data), "data.train", "sft", cfg, AutoTokenizer.from_pretrained(tiny_model))
    assert len(ex) == 1
    # The same megabyte in the prompt, which the stage reads, is refused before it is tokenized.
    data.write_text(json.dumps({"prompt": "x" * 1_000_000, "response": " runs"}) + "\n")
    with pytest.raises(Exception, match="more than data.max_length=32 tokens can hold"):
        load_examples(str(data), "data.train", "sft", cfg, AutoTokenizer.from_pretrained(tiny_model))
