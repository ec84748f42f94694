"""Checks and preparation that need no actors: model directory, tokenizer, lengths."""
from __future__ import annotations

from pathlib import Path

from rlhf_dist.config import Config, ConfigError


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1


def check_model_path(field: str, path: str) -> None:
    if _looks_local(path) and not (Path(path).expanduser() / "config.json").is_file():
        raise ConfigError(f"{field}: {path!r} is not a HuggingFace model directory (no config.json there)")


def prepare_model(cfg: Config, log=print):
    """Create the tiny demo model if asked and missing; check paths and lengths; return the tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    m = cfg.model
    if m.make_tiny and not (Path(m.policy) / "config.json").is_file():
        from rlhf_dist.data.tiny import make_tiny_model

        log(f"model.make_tiny: creating a tiny model and tokenizer at {m.policy}")
        make_tiny_model(m.policy)
    for field, path in (("model.policy", m.policy), ("model.critic", m.critic), ("model.reference", m.reference), ("reward.model", cfg.reward.model)):
        if path is not None:
            check_model_path(field, path)
    hf = AutoConfig.from_pretrained(m.policy)
    need = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    limit = getattr(hf, "max_position_embeddings", None)
    if limit is not None and need > limit:
        raise ConfigError(
            f"data.max_prompt_tokens + rollout.max_new_tokens = {need} exceeds the policy's "
            f"max_position_embeddings ({limit})"
        )
    tokenizer = AutoTokenizer.from_pretrained(m.policy)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
