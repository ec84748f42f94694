"""Weight-sync buckets: which parameters travel together, packing them into one flat buffer, and a checksum.

The plan is computed on the learner from parameter names and full shapes (under ZeRO-3 the local shapes are
partitions, so `ds_shape` is used) and sent to every engine, so both sides unpack the same layout.
"""
from __future__ import annotations

import dataclasses

import torch

_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}
# Bucket size for gathering a model to save it where no sync.bucket_mb is configured (the SFT/RM/DPO stages).
GATHER_BUCKET_MB = 64


@dataclasses.dataclass(frozen=True)
class Bucket:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str

    @property
    def numels(self) -> list[int]:
        out = []
        for shape in self.shapes:
            n = 1
            for s in shape:
                n *= s
            out.append(n)
        return out

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=_DTYPES[self.dtype]).element_size()

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.empty(self.numel, dtype=_DTYPES[self.dtype], device=device)

    def unpack(self, flat: torch.Tensor):
        """Yield (name, view) pairs into `flat`: no copies."""
        offset = 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            yield name, flat[offset : offset + n].view(shape)
            offset += n


def plan_buckets(params: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[Bucket]:
    """Group consecutive parameters into buckets of at most `bucket_bytes` (a larger parameter goes alone)."""
    buckets: list[Bucket] = []
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    size = 0
    dtype = None

    def flush():
        nonlocal names, shapes, size
        if names:
            buckets.append(Bucket(tuple(names), tuple(shapes), str(dtype)))
        names, shapes, size = [], [], 0

    for name, shape, dt in params:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        if names and (dt != dtype or size + nbytes > bucket_bytes):
            flush()
        dtype = dt
        names.append(name)
        shapes.append(tuple(int(s) for s in shape))
        size += nbytes
    flush()
    return buckets


def pack(tensors: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    offset = 0
    for t in tensors:
        n = t.numel()
        out[offset : offset + n].copy_(t.reshape(-1))
        offset += n
    return out


_PERIOD = 65521  # word i is weighted by i % _PERIOD + 1
_WEIGHTS: dict = {}  # device -> the weights of one period, made once per device


def checksum(flat: torch.Tensor) -> int:
    """Position-weighted sum of the buffer's 32-bit words, computed where the buffer lives (no host copy).

    Integer arithmetic wraps identically on every device, so learner and engine get the same number for the
    same bytes, and a swapped, stale or corrupted parameter changes it. The words are read in place as int32
    and weighted one period at a time (no int64 copy of the buffer): this runs on every verified sync.
    """
    raw = flat.detach().contiguous().reshape(-1).view(torch.uint8)  # any shape: the bytes in order
    pad = (-raw.numel()) % 4
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    words = raw.view(torch.int32)
    w = _WEIGHTS.get(words.device)
    if w is None:
        w = _WEIGHTS[words.device] = torch.arange(1, _PERIOD + 1, dtype=torch.int32, device=words.device)
    n = words.numel()
    k = n // _PERIOD
    weighted = (words[: k * _PERIOD].view(k, _PERIOD) * w).sum(dtype=torch.int64)
    weighted += (words[k * _PERIOD :] * w[: n - k * _PERIOD]).sum(dtype=torch.int64)
    return int(weighted.item()) ^ (int(words.sum(dtype=torch.int64).item()) << 1)
