"""Export a checkpoint's policy (or critic) to a HuggingFace directory, offline: no actors, no GPUs.

ZeRO stage 1-3 checkpoints are consolidated with DeepSpeed's own zero_to_fp32 reader; stage 0 checkpoints
hold the full module weights already. Every checkpoint file is read weights-only (rlhf_dist.safe_load). The
model config and tokenizer come from the run's model.policy. The output is written to a temporary directory
and renamed into place; an existing one is replaced only when forced.

A run that trained a LoRA adapter (model.lora, model.critic_lora) checkpoints the adapter alone (and a critic's
value head): the base weights are read from model.policy again, and the output is the base with the adapter
merged in (`--lora merged`), or the adapter as a peft directory (`--lora adapter`) that peft and vLLM load.
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


def lora_of(run_config: Path, role: str):
    """The run's adapter settings for `role` (None: it trained all its weights)."""
    from pydantic import ValidationError

    from rlhf_dist.config.common import LoraConfig

    key = "lora" if role == "policy" else "critic_lora"
    raw = (yaml.safe_load(run_config.read_text()).get("model") or {}).get(key)
    try:
        return None if raw is None else LoraConfig.model_validate(raw)
    except ValidationError:
        raise ConfigError(f"{run_config}: model.{key} is not a valid LoRA section") from None


def export(checkpoint_dir: str, out_dir: str, role: str = "policy", force: bool = False, lora: str = "merged") -> Path:
    check_output_dir(out_dir, "out_dir", force)
    found = at(checkpoint_dir, field="checkpoint")
    model_path = model_path_of(found.run_dir / "config.yaml", role)
    adapter = lora_of(found.run_dir / "config.yaml", role)
    if lora == "adapter" and (adapter is None or role == "critic"):
        raise ConfigError(f"--lora: adapter, but this run's {role} " + ("trained all its weights (no model.lora)" if adapter is None
                          else "has a value head outside its adapter; export it merged"))
    from rlhf_dist.preflight import check_model_path

    check_model_path(f"model.{role} (from {found.run_dir / 'config.yaml'})", model_path)
    ckpt = verified(found).path
    if not (ckpt / role).is_dir():
        raise ConfigError(f"--role: {str(ckpt / role)!r} does not exist (this checkpoint holds no {role})")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(model_path)
    if role == "critic":
        config.num_labels = 1
    Auto = AutoModelForTokenClassification if role == "critic" else AutoModelForCausalLM
    # With an adapter the checkpoint holds only what trained: the base comes from the model directory.
    model = Auto.from_config(config) if adapter is None else Auto.from_pretrained(model_path, config=config)
    state = consolidated_state_dict(ckpt / role)
    if adapter is not None:
        return _export_lora(model, adapter, state, role, lora, ckpt / role, model_path, out_dir, force)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only entries may legitimately be absent; real weights may not.
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ConfigError(f"{ckpt / role}: checkpoint does not match {model_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with atomic_dir(out_dir, "out_dir", force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(str(tmp))
    return Path(out_dir)


def _export_lora(model, adapter, state: dict, role: str, kind: str, where: Path, model_path: str, out_dir: str, force: bool) -> Path:
    from transformers import AutoTokenizer

    from rlhf_dist.config.specs import lora_spec
    from rlhf_dist.learner import lora

    model = lora.wrap(model, lora_spec(adapter.model_copy(update={"path": None}), heads=("score",) if role == "critic" else ()), 0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The checkpoint holds what trained (the adapter, a critic's head): each of those must be in it.
    lost = sorted({n for n, p in model.named_parameters() if p.requires_grad} & set(missing))
    if unexpected or lost:
        raise ConfigError(f"{where}: checkpoint does not match the adapter of model.{'lora' if role == 'policy' else 'critic_lora'} "
                          f"on {model_path}: missing {lost[:5]}, unexpected {unexpected[:5]}")
    with atomic_dir(out_dir, "out_dir", force) as tmp:
        if kind == "adapter":
            params = dict(model.named_parameters())
            lora.write_adapter(str(tmp), model, {n: lora.materialize(p, params) for n, p in lora.pieces(model, "adapter").items()})
        else:
            model.merge_and_unload().save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(str(tmp))
    return Path(out_dir)
