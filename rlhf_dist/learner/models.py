"""Loading HF models for each role, and the forward passes over a [prompt | response] batch.

Batches hold `input_ids` and `attention_mask` of shape [B, P + R]: prompts left-padded to P, responses
right-padded to R, and `mask` [B, R] marking real response tokens. Logits at position i predict token i+1,
so the response's predictions are positions P-1 .. P+R-2.
"""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(path: str, dtype: str, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn)


def load_value_model(path: str, dtype: str, attn: str):
    """Token-level value head on the policy's backbone; the head starts at zero so early values are 0."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[dtype], attn_implementation=attn
    )
    head = model.score
    import deepspeed

    # Under ZeRO-3 (HfDeepSpeedConfig active) the head is partitioned: gather it to write it.
    with deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=0), torch.no_grad():
        for p in head.parameters():
            p.zero_()
    return model


def load_reward_model(path: str, dtype: str, attn: str):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[dtype], attn_implementation=attn
    )


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions count real tokens only, as vLLM numbers them.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    R = batch["mask"].shape[1]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids(batch["attention_mask"]),
        use_cache=False,
    )
    return out.logits[:, -R - 1 : -1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def packed_response_logprobs(model, batch: dict[str, torch.Tensor], row_len: int, pad_id: int) -> torch.Tensor:
    """The same [B, R] response log-probs as `token_logprobs(response_logits(...))`, computed with the
    micro-batch's samples packed end to end into rows of at most `row_len` tokens (less padding to run).

    Each sample sees only itself: a block-diagonal causal mask (4-D, boolean: sdpa's form) and positions that
    restart at 0 for every sample."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"].bool(), batch["mask"]
    seqs = [ids[i][attn[i]] for i in range(ids.shape[0])]  # prompt then response, padding dropped
    rows: list[list[int]] = [[]]
    for i, s in enumerate(seqs):
        if rows[-1] and sum(len(seqs[j]) for j in rows[-1]) + len(s) > row_len:
            rows.append([])
        rows[-1].append(i)
    L = max(sum(len(seqs[j]) for j in r) for r in rows)
    packed = torch.full((len(rows), L), pad_id, dtype=ids.dtype, device=ids.device)
    pos = torch.zeros_like(packed)
    seg = torch.full_like(packed, -1)
    where = {}  # sample -> (row, offset)
    for r, members in enumerate(rows):
        off = 0
        for k, i in enumerate(members):
            n = len(seqs[i])
            packed[r, off : off + n], pos[r, off : off + n], seg[r, off : off + n] = seqs[i], torch.arange(n), k
            where[i] = (r, off)
            off += n
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
    # Trailing padding attends to itself only, so that no row of the mask is empty (sdpa would give NaN).
    allowed = (causal & same & (seg[:, :, None] >= 0)) | torch.eye(L, dtype=torch.bool, device=ids.device)
    logits = model(input_ids=packed, position_ids=pos, attention_mask=allowed[:, None], use_cache=False).logits
    out = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device)
    for i, s in enumerate(seqs):
        r, off = where[i]
        n_resp = int(mask[i].sum())
        start = off + len(s) - n_resp  # first response token
        out[i, :n_resp] = token_logprobs(logits[r, start - 1 : off + len(s) - 1], s[-n_resp:], 1.0)
    return out
