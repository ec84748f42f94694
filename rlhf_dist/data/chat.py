"""Chat templates: how a prompt is turned into the policy's input ids, and how a (prompt, response) pair is
turned into the ids a reward model scores.

The rule, one for every path (PPO prompts, SFT/DPO prompts, reward-model training, the PPO reward role, the
labelling judges): with `data.apply_chat_template` on, the policy reads the prompt as a user turn rendered by
its tokenizer's chat template with the generation prompt, and a reward model reads the whole conversation,
user turn then assistant turn, rendered by the reward model's own tokenizer's template. With it off, the
policy reads the prompt text and a reward model reads `prompt + response` as one text. Reward-model training
and PPO scoring call the same function, so a reward model is always scored on the format it was trained on.

Rendered templates already hold their special tokens (BOS, headers), so their ids are never passed through
the tokenizer's own special-token post-processing again (which would double a Llama-3 BOS).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from rlhf_dist.config import ConfigError


def require_template(tokenizer, field: str = "data.apply_chat_template") -> None:
    if not getattr(tokenizer, "chat_template", None):
        where = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ConfigError(f"{field}: the tokenizer of {where!r} has no chat template (set it to false for a base model)")


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` rendered by the chat template, as a plain list of ints.
    transformers 5 returns a BatchEncoding (a Mapping, not a dict) unless told otherwise; accept either."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [int(i) for i in out]


def as_messages(prompt: str | list[dict]) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer, prompt: str | list[dict], chat: bool) -> list[int]:
    """What the policy reads before its response. A list of messages is always rendered as a conversation."""
    if chat or isinstance(prompt, list):
        return chat_ids(tokenizer, as_messages(prompt), add_generation_prompt=True)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def conversation_ids(tokenizer, prompt: str, response: str, chat: bool) -> list[int]:
    """What a reward model scores for `response` to `prompt` (training and scoring alike)."""
    if chat:
        return chat_ids(tokenizer, [*as_messages(prompt), {"role": "assistant", "content": response}], add_generation_prompt=False)
    return list(tokenizer(prompt + response, add_special_tokens=True)["input_ids"])


def right_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows padded on the right: a reward model reads its score at the last real token."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn}


def reward_batch(tokenizer, pairs: list[tuple[str, str]], chat: bool) -> dict[str, torch.Tensor]:
    """The reward role's input for (prompt, response) pairs, laid out as reward-model training lays out pairs."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return right_padded([conversation_ids(tokenizer, p, r, chat) for p, r in pairs], pad)


def check_reward_format(reward_model: str | None, chat: bool) -> None:
    """A reward model trained by `rlhf-dist rm` records the format it was trained on (reward_stats.json);
    scoring it on the other format would give numbers it never learned, so that is refused."""
    stats = Path(reward_model) / "reward_stats.json" if reward_model else None
    if stats is None or not stats.is_file():
        return
    trained = json.loads(stats.read_text()).get("apply_chat_template")
    if trained is not None and trained != chat:
        raise ConfigError(
            f"data.apply_chat_template={str(chat).lower()}: the reward model {reward_model!r} was trained with "
            f"apply_chat_template={str(trained).lower()} ({stats}); set the same for PPO"
        )


# A fixed conversation that new messages are rendered after: their ids are the suffix of the longer render.
DELTA_BASE = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]


def message_delta_ids(tokenizer, messages: list[dict], eos_id: int) -> list[int]:
    """The ids `messages` add to a conversation whose last assistant turn ended with `eos_id`, generation prompt
    included: render [base + messages] and [base], keep the suffix after the base's last end-of-turn token (so
    what the template writes after an end of turn, Qwen2's newline, is kept). The history is never re-rendered."""
    base = chat_ids(tokenizer, DELTA_BASE, add_generation_prompt=False)
    if eos_id not in base:
        raise ValueError(f"the chat template does not end an assistant turn with the EOS token (id {eos_id})")
    cut = len(base) - base[::-1].index(eos_id)
    full = chat_ids(tokenizer, [*DELTA_BASE, *messages], add_generation_prompt=True)
    if full[:cut] != base[:cut]:
        raise ValueError("the chat template renders earlier turns differently once more messages follow")
    return full[cut:]
