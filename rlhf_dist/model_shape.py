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

    try:
        hf = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - malformed JSON, an unknown model_type: one line naming the file
        raise ConfigError(f"{field}: {path}/config.json cannot be read as a model config: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    hf = getattr(hf, "text_config", None) or hf  # multimodal configs keep the language model's sizes apart
    # The plan and the TP check divide by these: a zero, negative or missing size is a bad file, not a crash.
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        value = getattr(hf, key, None)
        if type(value) is not int or value < 1:
            raise ConfigError(f"{field}: {path}/config.json: {key} must be a positive integer (got {value!r})")
    kv = getattr(hf, "num_key_value_heads", None)
    if kv is not None and (type(kv) is not int or kv < 1 or hf.num_attention_heads % kv):
        raise ConfigError(f"{field}: {path}/config.json: num_key_value_heads={kv!r} must be a positive divisor of "
                          f"num_attention_heads={hf.num_attention_heads}")
    return hf


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
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf).parameters())
    except Exception as e:  # noqa: BLE001 - sizes transformers cannot build a model from
        raise ConfigError(f"{field}: {path}/config.json: no causal LM can be built from it: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    heads, kv_heads = heads_of(path, field)
    return ModelShape(
        params=params, hidden=hf.hidden_size, layers=hf.num_hidden_layers, heads=heads, kv_heads=kv_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads, vocab=hf.vocab_size,
    )


def linear_layers(path: str, field: str = "model.policy") -> dict[str, tuple[int, int]]:
    """name -> (in, out features) of the model's linear layers, its output head excepted: the layers a LoRA adapter
    may target (the model built on the meta device from config.json)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = _hf_config(path, field)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    head = model.get_output_embeddings()
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


def lora_params(path: str, targets, rank: int, field: str = "model.policy") -> int:
    """Parameters of a rank-`rank` adapter on the layers named `targets` (A: r x in, B: out x r per layer)."""
    return sum(rank * (i + o) for n, (i, o) in linear_layers(path, field).items() if n.rsplit(".", 1)[-1] in set(targets))


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
