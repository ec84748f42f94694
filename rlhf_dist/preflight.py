"""Checks and preparation that need no actors: model directory, tokenizer, lengths."""
from __future__ import annotations

from pathlib import Path

from rlhf_dist.config import Config, ConfigError
from rlhf_dist.data.chat import check_reward_format
from rlhf_dist.model_shape import check_tp_heads


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1


def check_model_path(field: str, path: str, needs_tokenizer: bool = False) -> None:
    """A local model directory is checked (config, architecture for the role, tokenizer, weight headers)."""
    if _looks_local(path):
        from rlhf_dist.model_checks import check_model_dir

        try:
            check_model_dir(field, Path(path).expanduser(), needs_tokenizer)
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"{str(Path(path).expanduser())!r}", repr(path), 1)) from None
        return
    # A hub id: resolved now (the local cache, or the hub when online), not in a worker after the actors start.
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - offline without a cached copy, a wrong id, no access
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{field}: {path!r} is not a local directory and cannot be loaded as a hub model id ({first})") from None


def prepare_model(cfg: Config, log=print):
    """Create the tiny demo model if asked and missing; check paths and lengths; return the tokenizer."""
    m = cfg.model
    for field, path in (("model.critic", m.critic), ("model.reference", m.reference), ("reward.model", cfg.reward.model)):
        if path is not None:
            check_model_path(field, path)
    if cfg.reward.model is not None and cfg.reward.model_normalize:
        stats = Path(cfg.reward.model) / "reward_stats.json"
        if not stats.is_file():
            raise ConfigError(f"reward.model_normalize: {str(stats)!r} does not exist (`rlhf-dist rm` writes it beside the model)")
    tokenizer = prepare_tokenizer(
        "model.policy", m.policy, m.make_tiny, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        "data.max_prompt_tokens + rollout.max_new_tokens", log, who="policy", init_std=m.tiny_init_std,
    )
    check_tp_heads(cfg.placement.rollout.tensor_parallel_size, m.policy)
    check_lora("model.lora", m.lora, m.policy)
    check_lora("model.critic_lora", m.critic_lora, m.critic or m.policy, "model.critic" if m.critic else "model.policy")
    check_stop_tokens(cfg.rollout.stop_token_ids, tokenizer, m.policy)
    check_reward_format(cfg.reward.model, cfg.data.apply_chat_template)
    return tokenizer


def check_stop_tokens(ids, tokenizer, path: str) -> None:
    """rollout.stop_token_ids must be tokens the policy can sample (the engines refused others only at start)."""
    from transformers import AutoConfig

    vocab = min(len(tokenizer), AutoConfig.from_pretrained(path).vocab_size)
    if bad := [i for i in ids if i >= vocab]:
        raise ConfigError(f"rollout.stop_token_ids: {bad} are outside the policy's vocabulary (ids 0..{vocab - 1})")


def prepare_tokenizer(field: str, path: str, make_tiny: bool | str, need_positions: int, need_what: str, log=print, who="model",
                      init_std: float = 0.02):
    """The model at `path` (made tiny first if asked and missing) must exist and hold `need_positions`
    positions; returns its tokenizer, with a pad token."""
    from transformers import AutoConfig, AutoTokenizer

    if make_tiny and not (Path(path) / "config.json").is_file():
        from rlhf_dist.data.tiny import make_tiny_model

        log(f"{field.split('.')[0]}.make_tiny: creating a tiny model and tokenizer at {path}")
        where = Path(path).expanduser()
        if where.is_dir() and any(where.iterdir()):
            raise ConfigError(f"{field}: {path!r} holds files but no config.json; make_tiny writes only into a missing or empty directory")
        if make_tiny in ("qwen2", "llama3"):
            from rlhf_dist.data.tiny_chat import make_chat_model

            make_chat_model(path, make_tiny)
        else:
            make_tiny_model(path, field=f"{field.split('.')[0]}.make_tiny ({field})", init_std=init_std)
    check_model_path(field, path, needs_tokenizer=True)
    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    if limit is not None and need_positions > limit:
        raise ConfigError(f"{need_what} = {need_positions} exceeds the {who}'s max_position_embeddings ({limit})")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_stage_model(m, max_length: int, log=print):
    if getattr(m, "reference", None) is not None:
        check_model_path("model.reference", m.reference)
    tokenizer = prepare_tokenizer("model.path", m.path, m.make_tiny, max_length, "data.max_length", log)
    check_lora("model.lora", getattr(m, "lora", None), m.path, "model.path")
    return tokenizer


def check_lora(field: str, lora, model_path: str, model_field: str = "model.policy") -> None:
    """An adapter's target modules name linear layers of the model (not its output head), and an initial adapter
    (`path`) is a peft directory with this rank, alpha and those targets."""
    if lora is None or not (Path(model_path) / "config.json").is_file():
        return  # a hub model is checked when it loads
    import json

    from rlhf_dist.model_shape import linear_layers

    have = {n.rsplit(".", 1)[-1] for n in linear_layers(model_path, model_field)}
    if unknown := [t for t in lora.target_modules if t not in have]:
        raise ConfigError(f"{field}.target_modules: {unknown} name no linear layer of {model_path!r} (it has "
                          f"{', '.join(sorted(have))})")
    if lora.path is None:
        return
    where = Path(lora.path)
    try:
        saved = json.loads((where / "adapter_config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{field}.path: {str(where / 'adapter_config.json')!r} cannot be read as a peft adapter config "
                          f"({type(e).__name__})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{field}.path: {str(where / 'adapter_config.json')!r} is not a JSON object")
    for key, name, want in (("r", "rank", lora.rank), ("lora_alpha", "alpha", lora.alpha)):
        if saved.get(key) != want:
            raise ConfigError(f"{field}.{name}: {want:g} but the adapter at {lora.path!r} has {key}={saved.get(key)!r}")
    targets = saved.get("target_modules")
    if not isinstance(targets, list) or set(targets) != set(lora.target_modules):
        raise ConfigError(f"{field}.target_modules: {sorted(lora.target_modules)} but the adapter at {lora.path!r} "
                          f"targets {targets!r}")
    from rlhf_dist.model_checks import check_safetensors

    check_safetensors(f"{field}.path", where / "adapter_model.safetensors")
