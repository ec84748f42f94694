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
