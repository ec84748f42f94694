"""Prompt datasets: local JSONL, validated line by line before any actor starts."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rlhf_dist.config import DataConfig
from rlhf_dist.data.chat import prompt_ids, require_template
from rlhf_dist.data.records import DataError, read_records, text_field  # noqa: F401 - DataError is re-exported
from rlhf_dist.config.validation import surely_too_long


@dataclasses.dataclass
class PromptSet:
    texts: list[str]
    ids: list[list[int]]
    labels: list | None  # None unless data.label_key is set
    skipped: list[str]  # "file:line: reason" for each skipped line


def _records(cfg: DataConfig, section: str):
    """Yield (where, record or None, problem or None) for each row."""
    for where, obj, problem in read_records(cfg.prompts, f"{section}.prompts"):
        if problem is None:
            problem = text_field(obj, cfg.prompt_key, f"{section}.prompt_key")
        if problem is None and cfg.label_key is not None and cfg.label_key not in obj:
            problem = f"missing field {cfg.label_key!r} ({section}.label_key)"
        yield where, (obj if problem is None else None), problem


def load_prompts(cfg: DataConfig, tokenizer, section: str = "data") -> PromptSet:
    """Read, check and tokenize every line. The first bad line is an error naming file and line, unless
    data.skip_bad_lines is set, in which case bad lines are skipped and listed in `skipped`. `section`: the
    config section the prompts file and keys come from (`eval` for held-out prompts), named in errors."""
    path = Path(cfg.prompts)
    if cfg.apply_chat_template:
        require_template(tokenizer)
    out = PromptSet([], [], [] if cfg.label_key is not None else None, [])
    hint = " (set data.skip_bad_lines=true to skip and count such lines)" if section == "data" else ""
    for where, obj, problem in _records(cfg, section):
        if obj is not None:
            problem = surely_too_long(obj[cfg.prompt_key], tokenizer, cfg.max_prompt_tokens, "data.max_prompt_tokens")
        if problem is None and obj is not None:
            ids = prompt_ids(tokenizer, obj[cfg.prompt_key], cfg.apply_chat_template)
            if len(ids) > cfg.max_prompt_tokens:
                problem = f"prompt has {len(ids)} tokens, more than data.max_prompt_tokens={cfg.max_prompt_tokens}"
        if problem is not None:
            if not cfg.skip_bad_lines:
                raise DataError(f"{where}: {problem}{hint}")
            out.skipped.append(f"{where}: {problem}")
            continue
        out.texts.append(obj[cfg.prompt_key])
        out.ids.append(ids)
        if out.labels is not None:
            out.labels.append(obj[cfg.label_key])
    if not out.texts:
        raise DataError(f"{section}.prompts: {path} has no usable prompts" + (f" ({len(out.skipped)} skipped)" if out.skipped else ""))
    return out


class PromptLoader:
    """Endless shuffled batches of prompt indices; reshuffles each epoch with a seeded generator."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self._order, self._pos = 0, torch.randperm(n, generator=self.gen).tolist(), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": self._order, "pos": self._pos, "gen": self.gen.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._order, self._pos = state["epoch"], list(state["order"]), state["pos"]
        self.gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))

    def next_batch(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if self._pos == self.n:
                self.epoch += 1
                self._order, self._pos = torch.randperm(self.n, generator=self.gen).tolist(), 0
            out.append(self._order[self._pos])
            self._pos += 1
        return out
