"""Assembling [prompt | response] batches and splitting them across data-parallel ranks. (A rollout batch's
groups are checked where it is made: rlhf_dist.rollout.trajectory.)"""
from __future__ import annotations

import numpy as np
import torch


def build_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                loss_masks: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Prompts left-padded to the longest prompt, responses right-padded to the longest response. `mask` is 1
    on the response tokens trained on: every response token, or where `loss_masks` (one entry per response
    token) says so (a multi-turn response's inserted tokens are attended to but not trained on)."""
    P = max(len(p) for p in prompts)
    R = max(1, max(len(r) for r in responses))
    B = len(prompts)
    # One flat copy of every token, placed by index (a tensor per row cost 5 ms for 256 rows).
    lp = torch.tensor([len(p) for p in prompts])
    lr = torch.tensor([len(r) for r in responses])
    cols = torch.arange(P + R)
    in_prompt = (cols >= P - lp[:, None]) & (cols < P)
    in_response = (cols >= P) & (cols < P + lr[:, None])
    attention_mask = (in_prompt | in_response).long()
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    # Row-major order of the True cells is each row's prompt then its response: the tokens' order.
    input_ids[attention_mask.bool()] = torch.tensor([t for p, r in zip(prompts, responses) for t in (*p, *r)], dtype=torch.long)
    mask = in_response[:, P:].float()
    if loss_masks is not None:
        mask[mask.bool()] = torch.tensor([m for row in loss_masks for m in row], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask}


def pad_rows(rows: list[list[float]], width: int) -> torch.Tensor:
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    out[torch.arange(width) < lengths[:, None]] = torch.tensor([x for r in rows for x in r], dtype=torch.float32)
    return out


def split(batch: dict[str, torch.Tensor], n: int) -> list[dict]:
    """n equal contiguous shards, as they are sent to the ranks (every rank must run the same number of micro
    batches; the config check guarantees divisibility): tensors as numpy arrays where numpy has the dtype (the
    ranks take them back with `from_wire`). Ray sends an array's own bytes as a raw buffer; a tensor is pickled
    through torch.save of its whole storage, so each rank's shard of a sliced batch carried the full batch
    (measured on the GRPO demo, submitting a pass to two ranks: 1.9 -> 1.0 ms; the update: 1.7 -> 0.9 ms)."""
    bounds = shard_bounds(batch["input_ids"].shape[0], n)
    if len({b - a for a, b in bounds}) != 1:
        raise ValueError(f"a batch of {batch['input_ids'].shape[0]} rows does not split evenly over {n} ranks")
    return [{k: to_wire(v[a:b]) for k, v in batch.items()} for a, b in bounds]


def shard_bounds(total: int, n: int) -> list[tuple[int, int]]:
    """[start, end) of n contiguous shards covering all `total` items, sizes differing by at most one (larger
    first), so no item is ever dropped; shards are empty only when total < n."""
    base, extra = divmod(total, n)
    bounds, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def shards(items: list, n: int) -> list[list]:
    """`items` in n contiguous shards (shard_bounds); callers skip empty ones."""
    return [items[a:b] for a, b in shard_bounds(len(items), n)]


# bfloat16 and the other dtypes numpy lacks stay tensors.
_WIRE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool)


def to_wire(v):
    if isinstance(v, torch.Tensor) and v.dtype in _WIRE_DTYPES and v.device.type == "cpu" and not v.requires_grad:
        return v.numpy()
    return v


def from_wire(v):
    """A shard's value as a tensor again. Received arrays are read-only views of the transport's buffers: copied."""
    return torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v


def concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
