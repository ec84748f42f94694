"""LoRA adapters on the learners (peft), under ZeRO 0-3.

The base weights stay frozen; only the adapter (and any head that trains whole: a value or reward head) reaches
the optimizer. The reference is the same model with the adapter off, or, when training started from
`model.lora.path`, with a frozen copy of that adapter on in its place: no second model is loaded.

Weight sync and saving see a model as pieces: each piece is one tensor the other side knows by name, made
from learner parameters that are gathered together (under ZeRO-3, one bucket at a time):
  full     the model's own parameters (a model without an adapter)
  adapter  the adapter's A and B matrices under the names peft saves them with
           (`base_model.model.<module>.lora_A.weight`), which vLLM and peft read
  merged   the base model's parameters under its own names, W + (alpha / r) B A where an adapter sits
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import torch

ADAPTER = "default"  # peft's name for the adapter being trained
REFERENCE = "reference"  # a frozen copy of model.lora.path: the reference's adapter
PREFIX = "base_model.model."  # what peft puts before the base model's names
WEIGHTS_FILE = "adapter_model.safetensors"


def wrap(model, spec, seed: int, checkpointing: bool = False):
    """`model` with a LoRA adapter (a LoraSpec): fresh (B = 0, A drawn from `seed`, the same on every rank) or
    read from `spec.path`; the base frozen, `spec.heads` trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.target_modules),
                        bias="none")
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = get_peft_model(model, config, adapter_name=ADAPTER)
    finally:
        torch.set_rng_state(rng)
    if spec.path:
        load_adapter_weights(model, spec.path, ADAPTER)
        model.add_adapter(REFERENCE, LoraConfig(**{**config.to_dict(), "lora_dropout": 0.0, "inference_mode": True}))
        load_adapter_weights(model, spec.path, REFERENCE)
        model.base_model.set_adapter(ADAPTER)  # the trained adapter stays the active, trainable one
    for name, p in model.named_parameters():
        if f".{REFERENCE}." in name:
            p.requires_grad_(False)
    for head in spec.heads:
        getattr(model.get_base_model(), head).requires_grad_(True)
    if checkpointing:
        # Reentrant checkpointing passes no gradient to segments whose inputs do not need one (frozen embeddings).
        model.enable_input_require_grads()
    return model


def load_adapter_weights(model, path: str, name: str) -> None:
    """An adapter's weights from a peft directory into adapter `name`; every tensor must land (preflight checked
    the directory's config against model.lora)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(os.path.join(path, WEIGHTS_FILE))
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    wanted = {n for n, _ in model.named_parameters() if f".{name}." in n}
    missing = sorted(wanted & set(getattr(result, "missing_keys", [])))
    if unexpected or missing:
        raise ValueError(f"model.lora.path {path!r}: {WEIGHTS_FILE} does not fit the adapter: "
                         f"unexpected {unexpected[:3]}, missing {missing[:3]}")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def base_model(model):
    """The transformers model inside a peft model (itself otherwise)."""
    return model.get_base_model() if is_peft(model) else model


def trainable(model) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def _adapter_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def reference_weights(model):
    """The reference's forward passes: the adapter off, or the frozen initial adapter on in its place.

    Switched on the adapter layers directly: peft's own switches (disable_adapter, set_adapter) also set
    requires_grad on parameters the DeepSpeed engine holds, which these passes, run without gradients, must
    not touch."""
    layers = _adapter_layers(model)
    saved = [(m._active_adapter, m._disable_adapters) for m in layers]
    try:
        for m in layers:
            if REFERENCE in m.lora_A:
                m._active_adapter = [REFERENCE]
            else:
                m._disable_adapters = True
        yield
    finally:
        for m, (active, disabled) in zip(layers, saved):
            m._active_adapter, m._disable_adapters = active, disabled


@dataclasses.dataclass(frozen=True)
class Piece:
    name: str  # the receiver's name for it
    shape: tuple[int, ...]
    params: tuple[str, ...]  # learner parameters it is made from, gathered together
    scaling: float = 0.0  # merged with an adapter: params are (W, A, B) and the piece is W + scaling * B @ A


def _adapter_name(name: str) -> str:
    return name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def _base_name(name: str) -> str:
    return name.removeprefix(PREFIX).replace(".base_layer.", ".")


def pieces(model, payload: str) -> dict[str, Piece]:
    """name -> piece of `payload` ("full", "adapter" or "merged"), in the model's parameter order."""
    return {p.name: p for p in _pieces(model, payload)}


def _pieces(model, payload: str) -> list[Piece]:
    named = [(n, tuple(int(s) for s in getattr(p, "ds_shape", p.shape))) for n, p in model.named_parameters()]
    if not is_peft(model) or payload == "full":
        return [Piece(n, s, (n,)) for n, s in named]
    if payload == "adapter":
        return [Piece(_adapter_name(n), s, (n,)) for n, s in named if f".lora_A.{ADAPTER}." in n or f".lora_B.{ADAPTER}." in n]
    if payload != "merged":
        raise ValueError(f"unknown weight payload {payload!r}")
    scales = {name: float(m.scaling[ADAPTER]) for name, m in model.named_modules()
              if hasattr(m, "scaling") and ADAPTER in getattr(m, "lora_A", {})}
    out = []
    for n, s in named:
        if ".lora_" in n:
            continue
        layer = n.removesuffix(".base_layer.weight")
        if layer != n and layer in scales:
            out.append(Piece(_base_name(n), s, (n, f"{layer}.lora_A.{ADAPTER}.weight", f"{layer}.lora_B.{ADAPTER}.weight"), scales[layer]))
        else:
            out.append(Piece(_base_name(n), s, (n,)))
    return out


def materialize(piece: Piece, params: dict) -> torch.Tensor:
    """The piece's full tensor from gathered parameters (`params`: name -> parameter)."""
    if len(piece.params) == 1:
        return params[piece.params[0]].data
    w, a, b = (params[n].data for n in piece.params)
    # In fp32, as the sum peft's forward computes, then in the base's dtype.
    return torch.addmm(w.float(), b.float(), a.float(), alpha=piece.scaling).to(w.dtype)


def write_adapter(path: str, model, state: dict[str, torch.Tensor]) -> None:
    """A peft adapter directory: adapter_config.json and the tensors under their saved names (`state`)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    config = model.peft_config[ADAPTER].to_dict()
    config.update(inference_mode=True, base_model_name_or_path=getattr(base_model(model).config, "_name_or_path", None))
    for k, v in config.items():  # sets (target_modules) are not JSON
        if isinstance(v, set):
            config[k] = sorted(v)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
