"""Preflight plan: GPU arithmetic and per-GPU memory estimates for every role, without starting anything.

Formulas (bytes; P = parameters, N = data-parallel ranks of the role, b = micro-batch, L = prompt + response
tokens, h = hidden size, a = attention heads, n = layers, V = vocabulary):

  training weights, gradients, optimizer (Adam) per GPU, by ZeRO stage:
    mixed precision (bf16/fp16): 2P params + 2P grads + 12P fp32 master/m/v
    fp32:                        4P params + 4P grads +  8P m/v
    stage 0: nothing partitioned; 1: optimizer / N; 2: optimizer and grads / N; 3: all three / N
    offload: optimizer states (and, at stage 3, parameters) live in CPU memory instead
  activations per micro-batch (Korthikanti et al. 2022, no sequence parallelism):
    without checkpointing: n * L*b*h * (34 + 5*a*L/h) * (dtype bytes / 2)
    with checkpointing:    n * 2*L*b*h (layer inputs) + one layer without checkpointing
  logits: b*L*V*4 (fp32 log-softmax)
  inference roles (reference, reward): dtype bytes * P (full replica) + logits; a ZeRO-3 reference holds
    dtype bytes * P / N plus about one gathered layer (dtype bytes * P / n)
  rollout engine: dtype bytes * P / TP + KV cache 2 * n * kv_heads * head_dim * dtype bytes * tokens / TP,
    tokens = samples per step / engines * L (all of an engine's requests in flight at once)
Colocated roles share their pool's GPUs, so their estimates add up on each GPU.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf_dist.config import Config, ConfigError, derive, role_gpus

GiB = 2**30


@dataclasses.dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def model_shape(path: str) -> ModelShape:
    """Parameter count and dimensions from a local HF config.json (the model is built on the meta device)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"plan: {path!r} has no config.json; plan reads model sizes from a local HF directory")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf).parameters())
    heads = hf.num_attention_heads
    return ModelShape(
        params=params,
        hidden=hf.hidden_size,
        layers=hf.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        vocab=hf.vocab_size,
    )


def training_state_bytes(P: int, dtype: str, stage: int, n: int, offload: bool) -> dict[str, float]:
    p, g, o = (4, 4, 8) if dtype == "float32" else (2, 2, 12)
    params, grads, optim = p * P, g * P, o * P
    if stage >= 1:
        optim /= n
    if stage >= 2:
        grads /= n
    if stage >= 3:
        params /= n
    if offload and stage >= 1:
        optim = 0.0
        if stage == 3:
            params = 0.0
    return {"params": params, "grads": grads, "optimizer": optim}


def activation_bytes(m: ModelShape, b: int, L: int, dtype_bytes: int, checkpointing: bool) -> float:
    full_layer = L * b * m.hidden * (34 + 5 * m.heads * L / m.hidden) * dtype_bytes / 2
    if checkpointing:
        return m.layers * 2 * L * b * m.hidden + full_layer
    return m.layers * full_layer


def plan(cfg: Config) -> dict:
    derived = derive(cfg)
    dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    L = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    b = cfg.ppo.micro_batch_size
    shape = model_shape(cfg.model.policy)
    logits = b * L * shape.vocab * 4
    roles: dict[str, dict] = {}
    p = cfg.placement
    used = role_gpus(cfg)
    for role in ("policy", "critic"):
        if role not in used:
            continue
        r = getattr(p, role)
        parts = training_state_bytes(shape.params, cfg.model.dtype, r.zero_stage, r.num_gpus, r.offload)
        parts["activations"] = activation_bytes(shape, b, L, dtype_bytes, cfg.model.gradient_checkpointing)
        parts["logits"] = logits if role == "policy" else b * L * 4
        roles[role] = {"pool": r.pool, "gpus": r.num_gpus, "zero_stage": r.zero_stage, "bytes": parts}
    ref_shards = p.reference.num_gpus if p.reference.zero_stage == 3 else 1
    if "reference" in used:
        roles["reference"] = {
            "pool": p.reference.pool, "gpus": p.reference.num_gpus, "zero_stage": p.reference.zero_stage,
            # ZeRO-3: a partition per GPU, plus the largest layer gathered during the forward pass (~P / n).
            "bytes": {"params": dtype_bytes * shape.params / ref_shards
                      + (dtype_bytes * shape.params / shape.layers if ref_shards > 1 else 0), "logits": logits},
        }
    if "reward" in used:
        rm = model_shape(cfg.reward.model) if (Path(cfg.reward.model) / "config.json").is_file() else shape
        roles["reward"] = {"pool": p.reward.pool, "gpus": p.reward.num_gpus, "bytes": {"params": dtype_bytes * rm.params}}
    tp = p.rollout.tensor_parallel_size
    tokens = derived.samples_per_step / p.rollout.num_engines * L
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes * tokens / tp
    roles["rollout"] = {
        "pool": p.rollout.pool, "gpus": derived.rollout_gpus, "engines": p.rollout.num_engines, "tensor_parallel": tp,
        "bytes": {"params": dtype_bytes * shape.params / tp, "kv_cache": kv},
    }
    for r in roles.values():
        r["total_gib"] = sum(r["bytes"].values()) / GiB
        r["bytes"] = {k: v / GiB for k, v in r["bytes"].items()}
    pools = {}
    for name, members in derived.roles_per_pool.items():
        if members:
            need = sum(roles[m]["total_gib"] for m in members if m in roles)
            pools[name] = {"gpus": derived.gpus_per_pool[name], "roles": members, "per_gpu_gib": need,
                           "gpu_memory_gib": cfg.cluster.gpu_memory_gb, "fits": need <= cfg.cluster.gpu_memory_gb}
    return {
        "model": dataclasses.asdict(shape),
        "sequence_tokens": L,
        "samples_per_step": derived.samples_per_step,
        "total_gpus": derived.total_gpus,
        "roles": roles,
        "pools": pools,
        "fits": all(pl["fits"] for pl in pools.values()),
    }


def format_plan(result: dict) -> str:
    m = result["model"]
    lines = [
        f"model: {m['params'] / 1e9:.3f} B parameters (hidden {m['hidden']}, layers {m['layers']}, heads {m['heads']}, "
        f"kv heads {m['kv_heads']}, vocab {m['vocab']}); {result['sequence_tokens']} tokens per sequence; "
        f"{result['samples_per_step']} samples per step; {result['total_gpus']} GPUs",
        "",
        f"{'role':<10} {'pool':<10} {'GPUs':>4}  {'GiB per GPU':>11}  breakdown (GiB)",
    ]
    for name, r in result["roles"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["bytes"].items())
        lines.append(f"{name:<10} {r['pool']:<10} {r['gpus']:>4}  {r['total_gib']:>11.2f}  {parts}")
    lines.append("")
    for name, pl in result["pools"].items():
        verdict = "fits" if pl["fits"] else f"DOES NOT FIT: short by {pl['per_gpu_gib'] - pl['gpu_memory_gib']:.1f} GiB per GPU"
        lines.append(
            f"pool {name}: {pl['gpus']} GPUs, roles {', '.join(pl['roles'])}: {pl['per_gpu_gib']:.2f} GiB per GPU "
            f"of {pl['gpu_memory_gib']:g} -> {verdict}"
        )
    return "\n".join(lines)


def plan_json(result: dict) -> str:
    return json.dumps(result, indent=2)
