"""The learners' two forward layouts for a micro-batch of [prompt | response] rows (or right-padded sequences):

- padded, trimmed: rows cut to the micro-batch's widest prompt and widest response (token-budget micro-batches
  group samples of similar length, so little padding is left);
- packed: samples end to end in rows no wider than the batch's own rows, each sample seeing only itself.

Packed rows restart positions at 0 for every sample, and the attention is block-diagonal causal:
- sdpa: a 4-D boolean mask [rows, 1, L, L] (True: may attend);
- eager: the same mask in additive form (0, or the dtype's minimum), which eager attention adds to its scores;
- flash_attention_2 (GPU only; flash-attn does not install on CPU, so no test here runs it): no mask, and
  transformers reads the sample boundaries from the restarting position ids and calls flash-attn's varlen
  kernel.
transformers 5 hands a 4-D mask to the attention as it is; it detects packing from position ids only when no
mask is given, so an all-ones 2-D mask with restarting positions lets packed samples attend to each other
(tests/test_packing.py shows both).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from rlhf_dist.data.packing import pack_rows


def response_width(batch: dict[str, torch.Tensor]) -> int:
    return batch["mask"].shape[-1] if "mask" in batch else 0


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The micro-batch cut to its widest prompt (left-padded) and widest response (right-padded): the columns
    no row uses dropped, from the ids and mask and from every per-token tensor shaped like `mask`."""
    attn = batch["attention_mask"]
    R = response_width(batch)
    split = attn.shape[-1] - R if R else 0  # without a response mask: right-padded sequences
    left = int(attn[..., :split].sum(-1).max()) if split else 0
    right = int(attn[..., split:].sum(-1).max())
    out = {}
    for k, v in batch.items():
        if k in ("input_ids", "attention_mask"):
            out[k] = v[..., split - left : split + right]
        elif R and v.ndim == batch["mask"].ndim and v.shape[:-1] == batch["mask"].shape[:-1] and v.shape[-1] == R:
            out[k] = v[..., :right]
        else:
            out[k] = v
    return out


def pad_right(x: torch.Tensor, width: int) -> torch.Tensor:
    """A trimmed per-token output [..., r] back to the batch's response width (zeros after)."""
    if x.shape[-1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _model_dtype(model) -> torch.dtype:
    return getattr(model, "module", model).dtype


def attention_kwargs(segments: torch.Tensor, impl: str, dtype: torch.dtype) -> dict:
    """The mask keeping packed samples apart, in the form `impl` takes. `segments` [rows, L]: each position's
    sample (-1: row padding, which attends to itself only, so that no query row is empty: sdpa would give NaN)."""
    if impl == "flash_attention_2":
        # GPU path (untested on CPU): varlen attention from the position ids; a mask would disable it.
        return {"attention_mask": None}
    L = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    allowed = (same & causal & (segments >= 0)[:, :, None]) | torch.eye(L, dtype=torch.bool, device=segments.device)
    if impl == "eager":
        additive = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
        return {"attention_mask": additive.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]}
    if impl != "sdpa":
        raise ValueError(f"packed sequences: no attention mask form for attn_implementation {impl!r}")
    return {"attention_mask": allowed[:, None]}


@dataclasses.dataclass
class Packing:
    """Where each real token of N padded rows [N, W] sits in the packed rows [rows, L]."""

    i: torch.Tensor  # padded row of each real token (row-major order: each sample's tokens in order)
    w: torch.Tensor  # its padded column
    r: torch.Tensor  # its packed row
    c: torch.Tensor  # its packed column
    shape: tuple[int, int]  # (N, W)
    ids: torch.Tensor  # [rows, L] packed ids (row padding: 0)
    pos: torch.Tensor  # [rows, L] positions, restarting at 0 for each sample
    seg: torch.Tensor  # [rows, L] each position's sample, -1 for row padding

    @property
    def positions(self) -> int:
        return self.ids.numel()

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Packed [rows, L, ...] values at the padded rows' real positions [N, W, ...] (zeros elsewhere)."""
        full = x.new_zeros((*self.shape, *x.shape[2:]))
        full[self.i, self.w] = x[self.r, self.c]
        return full


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packing:
    """N rows' samples packed, first-fit-decreasing, into rows as wide as the longest sample."""
    N, W = input_ids.shape
    attn = attention_mask.bool()
    lengths = attn.sum(1)
    rows = pack_rows(lengths.tolist(), max(int(lengths.max()), 1))
    row_of = torch.empty(N, dtype=torch.long)
    offset = torch.empty(N, dtype=torch.long)
    fill = []
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            row_of[i], offset[i] = r, o
            o += int(lengths[i])
        fill.append(o)
    dev = input_ids.device
    L = max(max(fill), 1)
    i_idx, w_idx = attn.nonzero(as_tuple=True)
    k = (attn.long().cumsum(1) - 1)[i_idx, w_idx]  # position within the sample
    r_idx, c_idx = row_of.to(dev)[i_idx], offset.to(dev)[i_idx] + k
    ids = torch.zeros((len(rows), L), dtype=input_ids.dtype, device=dev)
    pos = torch.zeros((len(rows), L), dtype=torch.long, device=dev)
    seg = torch.full((len(rows), L), -1, dtype=torch.long, device=dev)
    ids[r_idx, c_idx], pos[r_idx, c_idx], seg[r_idx, c_idx] = input_ids[i_idx, w_idx], k, i_idx
    return Packing(i_idx, w_idx, r_idx, c_idx, (N, W), ids, pos, seg)


def packed_forward(model, p: Packing, impl: str, head=None, **extra) -> torch.Tensor:
    """The model on the packed rows: logits [rows, L, V], or `head`'s per-token output (a sequence classifier's
    `score`, before it pools)."""
    captured = {}
    hook = None if head is None else head.register_forward_hook(lambda m, args, out: captured.__setitem__("out", out))
    try:
        with padded_dropout(getattr(getattr(model, "module", model), "dropout", None), p):
            out = model(input_ids=p.ids, position_ids=p.pos, **attention_kwargs(p.seg, impl, _model_dtype(model)), **extra)
    finally:
        if hook is not None:
            hook.remove()
    return captured["out"] if head is not None else out.logits


def packed_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, impl: str, head=None,
                   **extra) -> tuple[torch.Tensor, int]:
    """Per-token outputs [N, W, C] of N rows as the padded forward gives them at every real position (zeros
    elsewhere), computed with the rows' samples packed; and the positions the packed forward computed."""
    p = pack(input_ids, attention_mask)
    return p.to_padded(packed_forward(model, p, impl, head, **extra)), p.positions


@contextlib.contextmanager
def padded_dropout(module, p: Packing):
    """A token classifier's dropout before its head (the critic's value head: transformers gives it 0.1), drawn
    as the padded forward draws it: on the padded layout's shape, so the same positions drop and the random
    stream advances the same. (Dropout inside the layers would not match; Llama and Qwen2 have none.)"""
    if not isinstance(module, torch.nn.Dropout) or not module.training or module.p == 0:
        yield
        return
    rate = module.p

    def redraw(m, args, out):
        dropped = torch.nn.functional.dropout(p.to_padded(out), rate, training=True)
        out = out.clone()
        out[p.r, p.c] = dropped[p.i, p.w]
        return out

    module.p = 0.0  # the module passes its input through without drawing; the hook draws instead
    hook = module.register_forward_hook(redraw)
    try:
        yield
    finally:
        hook.remove()
        module.p = rate


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, -2)


def response_outputs(model, batch: dict[str, torch.Tensor], packed: bool, impl: str) -> tuple[torch.Tensor, int]:
    """Outputs at the positions that predict the response tokens, [.., R, C] (C: the vocabulary, or a critic's
    one value), for [B, W] rows or [B, 2, W] pairs; and the positions the forward computed."""
    from rlhf_dist.learner.models import position_ids

    R = batch["mask"].shape[-1]
    ids, attn = _flat(batch["input_ids"]), _flat(batch["attention_mask"])
    if packed:
        full, positions = packed_outputs(model, ids, attn, impl, use_cache=False)
    else:
        full = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False).logits
        positions = ids.numel()
    return full[:, -R - 1 : -1].unflatten(0, batch["mask"].shape[:-1]), positions


def response_logprobs(model, batch: dict[str, torch.Tensor], packed: bool, impl: str, temperature: float,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Log-probs [.., R] of the response tokens (and the entropy of each prediction), for [B, W] rows or [B, 2, W]
    pairs; and the positions computed. Packed, they are read off the packed rows, so no [B, R, vocabulary]
    tensor of padding is made."""
    from rlhf_dist.algorithms import entropy_from_logits
    from rlhf_dist.learner.models import token_logprobs

    R = batch["mask"].shape[-1]
    tokens = batch["input_ids"][..., -R:]
    if not packed:
        logits, positions = response_outputs(model, batch, False, impl)
        return (token_logprobs(logits, tokens, temperature), entropy_from_logits(logits / temperature) if with_entropy else None,
                positions)
    p = pack(_flat(batch["input_ids"]), _flat(batch["attention_mask"]))
    logits = packed_forward(model, p, impl, use_cache=False)
    # Position j predicts the row's token j + 1 (the next token of the same sample wherever it is read).
    following = torch.nn.functional.pad(p.ids[:, 1:], (0, 1))
    lp = token_logprobs(logits, following, temperature)
    picked = [lp] + ([entropy_from_logits(logits / temperature)] if with_entropy else [])
    out = [p.to_padded(x)[:, -R - 1 : -1].unflatten(0, batch["mask"].shape[:-1]) for x in picked]
    return out[0], out[1] if with_entropy else None, p.positions


def last_token_scores(model, batch: dict[str, torch.Tensor], packed: bool, impl: str, pad_id: int) -> tuple[torch.Tensor, int]:
    """A sequence classifier's first output at each row's last token [..] ([B] or [B, 2]), the token
    transformers pools at (the rightmost one that is not the pad id); and the positions computed."""
    ids, attn = _flat(batch["input_ids"]), _flat(batch["attention_mask"])
    if packed:
        inner = getattr(model, "module", model)
        full, positions = packed_outputs(model, ids, attn, impl, head=inner.score)
        cols = torch.arange(ids.shape[-1], device=ids.device)
        last = (cols * (ids != pad_id)).argmax(-1)
        scores = full[torch.arange(ids.shape[0], device=ids.device), last, 0]
    else:
        scores = model(input_ids=ids, attention_mask=attn).logits[:, 0]
        positions = ids.numel()
    return scores.float().unflatten(0, batch["input_ids"].shape[:-1]), positions
