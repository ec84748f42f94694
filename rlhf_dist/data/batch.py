"""Assembling [prompt | response] batches and splitting them across data-parallel ranks.

The grouping contract, written once here: with G samples per prompt, the rows of one prompt are consecutive,
so prompt group g is rows [g*G, (g+1)*G). The loop requests each prompt G times in a row, the engines answer
in request order, and the group estimators, dynamic sampling and labelling read groups by this layout;
`check_groups` verifies it where a batch is assembled.
"""
from __future__ import annotations

import numpy as np
import torch

from rlhf_dist.rollout.finish import truncated_flags


def rollout_batch(prompt_ids, idx: list[int], responses, logprobs, finish_reasons, scores, group_size: int) -> tuple[dict, dict]:
    """A step's rollouts from generated, scored samples (row r answers prompt idx[r]; the grouping contract is
    checked here), and the truncation metric every step logs."""
    check_groups(idx, group_size)
    R = max(1, max(len(r) for r in responses))
    roll = {
        "prompt_ids": [prompt_ids[i] for i in idx],
        "responses": responses,
        "engine_logprobs": pad_rows(logprobs, R),
        "scores": scores,
        "truncated": truncated_flags(finish_reasons),
    }
    return roll, {"response/truncated_fraction": float(roll["truncated"].float().mean())}


def throughput_metrics(tokens: int, seconds: float) -> dict:
    """The tokens a step generated and their rate."""
    return {"rollout/tokens": float(tokens), "rollout/tokens_per_s": tokens / max(seconds, 1e-9)}


def reward_part_metrics(parts: dict) -> dict:
    """Each reward component's unweighted mean over the trained samples (e.g. accuracy)."""
    return {f"reward/{name}": float(v.mean()) for name, v in parts.items()}


def build_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts left-padded to the longest prompt, responses right-padded to the longest response."""
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
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask}


def pad_rows(rows: list[list[float]], width: int) -> torch.Tensor:
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    out[torch.arange(width) < lengths[:, None]] = torch.tensor([x for r in rows for x in r], dtype=torch.float32)
    return out


def split(batch: dict[str, torch.Tensor], n: int) -> list[dict]:
    """n equal contiguous shards (the config check guarantees divisibility), as they are sent to the ranks:
    tensors as numpy arrays where numpy has the dtype (the ranks take them back with `from_wire`). Ray sends an
    array's own bytes as a raw buffer; a tensor is pickled through torch.save of its whole storage, so each
    rank's shard of a sliced batch carried the full batch (measured on the GRPO demo, submitting a pass to two
    ranks: 1.9 -> 1.0 ms; the update: 1.7 -> 0.9 ms)."""
    size = batch["input_ids"].shape[0] // n
    return [{k: to_wire(v[i * size : (i + 1) * size]) for k, v in batch.items()} for i in range(n)]


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


def split_list(items: list, n: int) -> list[list]:
    size = len(items) // n
    return [items[i * size : (i + 1) * size] for i in range(n)]


def concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def check_groups(prompt_index: list[int], group_size: int) -> None:
    """Raise unless `prompt_index` (the prompt of each row) holds whole groups of one prompt each."""
    if len(prompt_index) % group_size:
        raise ValueError(f"{len(prompt_index)} rows do not split into groups of {group_size} samples per prompt")
    for start in range(0, len(prompt_index), group_size):
        if len(set(prompt_index[start : start + group_size])) != 1:
            raise ValueError(f"rows {start}..{start + group_size - 1} mix prompts: the samples of a prompt must be consecutive")
