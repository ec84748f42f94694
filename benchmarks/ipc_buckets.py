"""Weight buckets shared between two processes on one device, without copying through host memory.

When the policy and a rollout engine share a GPU, NCCL refuses two ranks on one device. The learner can
instead pack a bucket on its GPU and hand the engine a CUDA IPC handle to it (torch's `reduce_tensor`): the
engine maps the same device memory and reads the weights in place. The handle is small and picklable (it can
travel through a Ray call); the learner must keep the bucket alive until the engine has loaded it.

The same functions share CPU tensors through shared memory, which is how they are tested without a GPU.
Not part of the sync path yet (it needs a GPU to be exercised end to end), so it lives with the GPU checks.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from rlhf_dist.sync.buckets import Bucket, checksum, pack


def share_bucket(bucket: Bucket, tensors: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, Any, int]:
    """Pack `tensors` into one flat buffer on `device`; returns (buffer, handle, checksum). Keep `buffer`
    referenced until the receiver is done: its memory is what the handle points to."""
    from torch.multiprocessing.reductions import reduce_tensor

    flat = pack(tensors, bucket.empty(device))
    if flat.device.type == "cpu":
        flat.share_memory_()
    return flat, reduce_tensor(flat), checksum(flat)


def open_bucket(bucket: Bucket, handle: Any, expected: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) views of a shared bucket, in the sender's memory; with `expected`, the bytes are
    checked first and a mismatch raises before any weight is handed on."""
    from rlhf_dist.errors import WeightSyncError

    rebuild, args = handle
    flat = rebuild(*args)
    if expected is not None:
        got = checksum(flat)
        if got != expected:
            raise WeightSyncError(
                f"shared bucket ({bucket.names[0]} .. {bucket.names[-1]}): checksum {got} differs from the sender's {expected}"
            )
    return bucket.unpack(flat)
