"""Demonstrations (SFT) and preference pairs (RM, DPO): read, checked row by row, tokenized, split into
train and held-out sets, all before any actor starts.

Token layout follows the PPO batches: a prompt, then a response that ends with the tokenizer's EOS. The reward
model instead reads the whole conversation, tokenized exactly as the PPO reward role tokenizes it (data/chat.py).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from rlhf_dist.data.batch import build_batch
from rlhf_dist.data.chat import conversation_ids, prompt_ids, require_template, right_padded
from rlhf_dist.data.records import DataError, read_records, text_field
from rlhf_dist.config.stages import StageData
from rlhf_dist.config.validation import surely_too_long


@dataclasses.dataclass
class Examples:
    """Tokenized samples. SFT: `responses`; pairs: `chosen` and `rejected` (plus `margins` when configured)."""

    prompts: list[list[int]]
    responses: list[list[int]] | None = None
    chosen: list[list[int]] | None = None
    rejected: list[list[int]] | None = None
    margins: list[float] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: list[int]) -> "Examples":
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Examples(pick(self.prompts), pick(self.responses), pick(self.chosen), pick(self.rejected), pick(self.margins))


def _response_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


ROLES = ("system", "user", "assistant", "tool")


def read_fields(cfg: StageData, kind: str) -> list[str]:
    """The fields a stage reads from a row (only these are measured before tokenizing)."""
    if kind == "sft":
        return [cfg.messages_key] if cfg.messages_key is not None else [cfg.prompt_key, cfg.response_key]
    return [cfg.prompt_key, cfg.chosen_key, cfg.rejected_key]


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):  # messages
        return [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return []


def _messages_problem(obj: dict, key: str) -> str | None:
    msgs = obj.get(key)
    if not isinstance(msgs, list) or len(msgs) < 2:
        return f"field {key!r} must be a list of at least 2 messages (data.messages_key)"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} of {key!r} must be {{'role': str, 'content': str}}"
        if m["role"] not in ROLES:  # chat templates render only these (others raised inside the template, or vanished)
            return f"message {i} of {key!r} has role {m['role']!r}; roles are {', '.join(ROLES)}"
    if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
        return f"the last message of {key!r} must be a non-empty assistant turn (it is the response trained on)"
    return None


def _sft_row(obj: dict, cfg: StageData, tokenizer):
    """(prompt ids, response ids) or a problem string."""
    if cfg.messages_key is not None:
        problem = _messages_problem(obj, cfg.messages_key)
        if problem:
            return problem
        msgs = obj[cfg.messages_key]
        return prompt_ids(tokenizer, msgs[:-1], True), _response_ids(tokenizer, msgs[-1]["content"])
    problem = text_field(obj, cfg.prompt_key, "data.prompt_key") or text_field(obj, cfg.response_key, "data.response_key")
    if problem:
        return problem
    return prompt_ids(tokenizer, obj[cfg.prompt_key], cfg.apply_chat_template), _response_ids(tokenizer, obj[cfg.response_key])


def _pair_row(obj: dict, cfg: StageData, tokenizer, for_reward_model: bool):
    """(prompt ids, chosen ids, rejected ids, margin) or a problem string."""
    for key, field in ((cfg.prompt_key, "data.prompt_key"), (cfg.chosen_key, "data.chosen_key"), (cfg.rejected_key, "data.rejected_key")):
        problem = text_field(obj, key, field)
        if problem:
            return problem
    prompt, chosen, rejected = obj[cfg.prompt_key], obj[cfg.chosen_key], obj[cfg.rejected_key]
    if chosen == rejected:
        return "chosen and rejected are the same text: the pair says nothing"
    margin = 0.0
    if cfg.margin_key is not None:
        margin = obj.get(cfg.margin_key)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool):
            return f"field {cfg.margin_key!r} (data.margin_key) must be a number"
        if not math.isfinite(margin):
            return f"field {cfg.margin_key!r} (data.margin_key) must be a number, finite (not {margin})"
    if for_reward_model:
        # Scored exactly as the PPO reward role scores a rollout (data/chat.py states the rule).
        ids = lambda text: conversation_ids(tokenizer, prompt, text, cfg.apply_chat_template)  # noqa: E731
        return [], ids(chosen), ids(rejected), float(margin)
    p = prompt_ids(tokenizer, prompt, cfg.apply_chat_template)
    return p, _response_ids(tokenizer, chosen), _response_ids(tokenizer, rejected), float(margin)


def load_examples(path: str, field: str, kind: str, cfg: StageData, tokenizer) -> Examples:
    """kind: 'sft', 'dpo' or 'rm'. The first bad row stops with file:line unless data.skip_bad_lines."""
    out = Examples([], [] if kind == "sft" else None, None if kind == "sft" else [], None if kind == "sft" else [],
                   [] if kind != "sft" and cfg.margin_key else None)
    uses_messages = kind == "sft" and cfg.messages_key is not None
    if cfg.apply_chat_template or uses_messages:
        require_template(tokenizer, "data.messages_key" if uses_messages else "data.apply_chat_template")
    for where, obj, problem in read_records(path, field):
        row = problem
        if obj is not None:  # an enormous field the stage reads is refused before it is tokenized
            row = next(filter(None, (surely_too_long(t, tokenizer, cfg.max_length, "data.max_length")
                                     for k in read_fields(cfg, kind) for t in _texts(obj.get(k)))), None)
        if obj is not None and row is None:
            row = _sft_row(obj, cfg, tokenizer) if kind == "sft" else _pair_row(obj, cfg, tokenizer, kind == "rm")
        if not isinstance(row, str):
            longest = len(row[0]) + max(len(r) for r in row[1:3] if isinstance(r, list))
            if longest > cfg.max_length:
                row = f"{longest} tokens (prompt + response), more than data.max_length={cfg.max_length}"
        if isinstance(row, str):
            if not cfg.skip_bad_lines:
                raise DataError(f"{where}: {row} (set data.skip_bad_lines=true to skip and count such lines)")
            out.skipped.append(f"{where}: {row}")
            continue
        out.prompts.append(row[0])
        if kind == "sft":
            out.responses.append(row[1])
        else:
            out.chosen.append(row[1])
            out.rejected.append(row[2])
            if out.margins is not None:
                out.margins.append(row[3])
    if not len(out):
        raise DataError(f"{field}: {path} has no usable rows" + (f" ({len(out.skipped)} skipped)" if out.skipped else ""))
    return out


def train_eval_split(cfg: StageData, kind: str, tokenizer, seed: int) -> tuple[Examples, Examples | None]:
    """The training set and the held-out set: data.eval if given, else a seeded data.eval_fraction of data.train."""
    train = load_examples(cfg.train, "data.train", kind, cfg, tokenizer)
    if cfg.eval is not None:
        return train, load_examples(cfg.eval, "data.eval", kind, cfg, tokenizer)
    n_eval = int(len(train) * cfg.eval_fraction)
    if n_eval == 0:
        return train, None
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    held, kept = train.subset(order[:n_eval]), train.subset(order[n_eval:])
    kept.skipped = train.skipped
    return kept, held


def make_batch(ex: Examples, idx: list[int], kind: str, pad_id: int) -> dict[str, torch.Tensor]:
    """SFT: [prompt | response] rows. Pairs: [B, 2, T] tensors, chosen then rejected, so that micro-batches
    and rank shards (split along the first dimension) never separate a pair."""
    prompts = [ex.prompts[i] for i in idx]
    if kind == "sft":
        return build_batch(prompts, [ex.responses[i] for i in idx], pad_id)
    chosen, rejected = [ex.chosen[i] for i in idx], [ex.rejected[i] for i in idx]
    if kind == "rm":
        flat = right_padded(chosen + rejected, pad_id)
    else:
        flat = build_batch(prompts + prompts, chosen + rejected, pad_id)
    B = len(idx)
    batch = {k: torch.stack([v[:B], v[B:]], dim=1) for k, v in flat.items()}
    if ex.margins is not None:
        batch["margin"] = torch.tensor([ex.margins[i] for i in idx], dtype=torch.float32)
    return batch

