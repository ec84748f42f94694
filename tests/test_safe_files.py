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
