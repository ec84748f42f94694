"""A model's shape read from its local config.json (nothing loaded), and the tensor-parallel check on it.

`check_tp_heads` is the one place that decides whether a tensor-parallel size can split a model: `plan`,
`train` and `label` call it before any actor starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_dist.config import ConfigError


@dataclasses.dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def _hf_config(path: str, field: str):
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{field}: {path!r} has no config.json; model sizes are read from a local HF directory")
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(path)
    return getattr(hf, "text_config", None) or hf  # multimodal configs keep the language model's sizes apart


def heads_of(path: str, field: str = "model.policy") -> tuple[int, int]:
    """(attention heads, key/value heads) of the model at `path`."""
    hf = _hf_config(path, field)
    heads = hf.num_attention_heads
    return heads, getattr(hf, "num_key_value_heads", None) or heads


def model_shape(path: str, field: str = "model.policy") -> ModelShape:
    """Parameter count and dimensions from a local HF config.json (the model is built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = _hf_config(path, field)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf).parameters())
    heads, kv_heads = heads_of(path, field)
    return ModelShape(
        params=params, hidden=hf.hidden_size, layers=hf.num_hidden_layers, heads=heads, kv_heads=kv_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads, vocab=hf.vocab_size,
    )


def tp_problem(tp: int, heads: int, kv_heads: int) -> str | None:
    """Why `tp` cannot split these heads, or None. Query heads must divide evenly; key/value heads must divide
    evenly too, or be fewer than `tp` and divide it (vLLM then replicates each KV head on tp / kv_heads ranks)."""
    if heads % tp:
        return f"{heads} attention heads are not divisible by {tp}"
    if kv_heads % tp and tp % kv_heads:
        return f"{kv_heads} key/value heads neither divide nor are divisible by {tp}"
    return None


def check_tp_heads(tp: int, model_path: str, field: str = "placement.rollout.tensor_parallel_size",
                   model_field: str = "model.policy") -> None:
    """ConfigError naming `field` when tensor parallelism `tp` cannot split the model at `model_path`."""
    if tp == 1:
        return
    heads, kv_heads = heads_of(model_path, model_field)
    problem = tp_problem(tp, heads, kv_heads)
    if problem:
        raise ConfigError(f"{field}={tp}: {problem} ({model_field} {model_path!r}); choose a size that divides both")
