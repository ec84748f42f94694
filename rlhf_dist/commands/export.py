"""Export a checkpoint's policy (or critic) to a HuggingFace directory, offline: no actors, no GPUs.

ZeRO stage 1-3 checkpoints are consolidated with DeepSpeed's own zero_to_fp32 reader; stage 0 checkpoints
hold the full module weights already. Every checkpoint file is read weights-only (rlhf_dist.safe_load). The
model config and tokenizer come from the run's model.policy. The output is written to a temporary directory
and renamed into place; an existing one is replaced only when forced.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from rlhf_dist import safe_load
from rlhf_dist.checkpoint import at, verified
from rlhf_dist.config import ConfigError
from rlhf_dist.outputs import atomic_dir, check_output_dir


def consolidated_state_dict(role_dir: Path) -> dict:
    tag_dir = role_dir / "state"
    if list(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with safe_load.weights_only_loads(str(tag_dir)):
            return get_fp32_state_dict_from_zero_checkpoint(str(role_dir), tag="state")
    states = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise ConfigError(f"{role_dir}: no DeepSpeed checkpoint files found")
    return safe_load.load(states[0])["module"]


def model_path_of(run_config: Path, role: str) -> str:
    try:
        cfg = yaml.safe_load(run_config.read_text())
        model = cfg["model"]
        path = model["policy"] if role == "policy" else (model.get("critic") or model["policy"])
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError):
        raise ConfigError(f"{run_config}: not a PPO run config (export reads model.policy from it)") from None
    if not isinstance(path, str):
        raise ConfigError(f"{run_config}: model.policy is not a path")
    return path


def export(checkpoint_dir: str, out_dir: str, role: str = "policy", force: bool = False) -> Path:
    check_output_dir(out_dir, "out_dir", force)
    found = at(checkpoint_dir, field="checkpoint")
    model_path = model_path_of(found.run_dir / "config.yaml", role)
    from rlhf_dist.preflight import check_model_path

    check_model_path(f"model.{role} (from {found.run_dir / 'config.yaml'})", model_path)
    ckpt = verified(found).path
    if not (ckpt / role).is_dir():
        raise ConfigError(f"--role: {str(ckpt / role)!r} does not exist (this checkpoint holds no {role})")
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
    with atomic_dir(out_dir, "out_dir", force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(str(tmp))
    return Path(out_dir)
