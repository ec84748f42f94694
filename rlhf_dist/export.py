"""Export a checkpoint's policy (or critic) to a HuggingFace directory, offline: no actors, no GPUs.

ZeRO stage 1-3 checkpoints are consolidated with DeepSpeed's own zero_to_fp32 reader; stage 0 checkpoints
hold the full module weights already. The model config and tokenizer come from the run's model.policy.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from rlhf_dist.checkpoint import at
from rlhf_dist.config import ConfigError


def consolidated_state_dict(role_dir: Path) -> dict[str, torch.Tensor]:
    tag_dir = role_dir / "state"
    if list(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(role_dir), tag="state")
    states = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise ConfigError(f"{role_dir}: no DeepSpeed checkpoint files found")
    return torch.load(states[0], map_location="cpu", weights_only=False)["module"]


def export(checkpoint_dir: str, out_dir: str, role: str = "policy") -> Path:
    found = at(checkpoint_dir, field="export")
    ckpt = found.path
    cfg = yaml.safe_load((found.run_dir / "config.yaml").read_text())
    model_path = cfg["model"]["policy"] if role == "policy" else (cfg["model"].get("critic") or cfg["model"]["policy"])
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(model_path)
    if role == "critic":
        config.num_labels = 1
        model = AutoModelForTokenClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    state = consolidated_state_dict(ckpt / role)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only entries may legitimately be absent; real weights may not.
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ConfigError(f"{ckpt / role}: checkpoint does not match {model_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(str(out))
    return out
