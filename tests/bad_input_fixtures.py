"""Broken model directories and checkpoints for the bad-input tables, made locally from the tiny model."""
import json
import shutil
from pathlib import Path

import torch
import yaml


def _variant(root: Path, model: str, name: str) -> Path:
    out = root / name
    shutil.copytree(model, out)
    return out


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def make_model_variants(root: Path, model: str) -> Path:
    """root/NAME: the tiny model with one thing wrong each."""
    no_tok = _variant(root, model, "no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (no_tok / f).unlink(missing_ok=True)
    (_variant(root, model, "bad-json") / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],\n  "hidden_size": 64,,}')
    (_variant(root, model, "json-list") / "config.json").write_text("[1, 2]")
    (_variant(root, model, "json-not-utf8") / "config.json").write_bytes(b'{"model_type": "ll\xffama"}')
    _edit_config(_variant(root, model, "masked-lm"), architectures=["BertForMaskedLM"])
    _edit_config(_variant(root, model, "seq-cls"), architectures=["LlamaForSequenceClassification"])
    _edit_config(_variant(root, model, "archs-string"), architectures="LlamaForCausalLM")
    weights = _variant(root, model, "truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (_variant(root, model, "garbage-header") / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    (_variant(root, model, "huge-header") / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (_variant(root, model, "no-weights") / "model.safetensors").unlink()
    shard = _variant(root, model, "missing-shard")
    (shard / "model.safetensors").rename(shard / "model-00001-of-00002.safetensors")
    (shard / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (_variant(root, model, "bad-index") / "model.safetensors.index.json").write_text("{}")
    (root / "empty-dir").mkdir()
    make_adapters(root)
    return root


def make_adapters(root: Path) -> None:
    """root/adapter: a peft-format adapter (rank 8, alpha 16, q_proj and v_proj) for the tiny model; root/adapter-*:
    the same with one thing wrong."""
    from safetensors.torch import save_file

    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    for name in ("adapter", "adapter-truncated", "adapter-bad-json"):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(json.dumps(config))
        tensors = {f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight": torch.zeros(8, 64) if ab == "A" else torch.zeros(64, 8)
                   for m in ("q_proj", "v_proj") for ab in "AB"}
        save_file(tensors, str(root / name / "adapter_model.safetensors"))
    weights = root / "adapter-truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "adapter-bad-json" / "adapter_config.json").write_text('{"r": 8,,}')


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint(run: Path, name: str = "step_00000001", config: bool = True, parent: str = "checkpoints") -> Path:
    ckpt = run / parent / name
    (ckpt / "policy" / "state").mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("1")
    (ckpt / "trainer.json").write_text("{}")
    if config:
        (run / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "x"}, "model": {"policy": "MODEL"}}))
    return ckpt


def make_checkpoints(root: Path, model: str) -> Path:
    """root/NAME/...: checkpoint directories that resume and export must refuse."""
    def fix_model(run: Path) -> None:
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("MODEL", model))

    good_state = {"module": {"w": torch.zeros(1)}}
    for run, kw in (("bad-name", {"name": "latest"}), ("no-config", {"config": False}),
                    ("not-in-checkpoints", {"parent": "saves"}), ("crafted", {}), ("corrupt", {}),
                    ("no-critic", {}), ("stage-run", {}), ("hub-id", {})):
        ckpt = _checkpoint(root / run, **kw)
        if kw.get("config", True):
            fix_model(root / run)
        torch.save(good_state, ckpt / "policy" / "state" / "mp_rank_00_model_states.pt")
    crafted = root / "crafted" / "checkpoints" / "step_00000001" / "policy" / "state" / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "x": Payload(root / "PAYLOAD_RAN")}, crafted)
    (root / "corrupt" / "checkpoints" / "step_00000001" / "tensors.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    (root / "stage-run" / "config.yaml").write_text(yaml.safe_dump({"model": {"path": model}}))
    # A run that trained a hub model: export must resolve it before reading any weights (offline: one line).
    (root / "hub-id" / "config.yaml").write_text(yaml.safe_dump({"model": {"policy": "rlhf-dist-tests/no-such-model"}}))
    (root / "incomplete" / "checkpoints" / "step_00000002").mkdir(parents=True)
    return root
