"""Prompt datasets: local JSONL, validated line by line before any actor starts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from rlhf_dist.config import ConfigError, DataConfig


class DataError(ConfigError):
    pass


@dataclasses.dataclass
class PromptSet:
    texts: list[str]
    ids: list[list[int]]
    labels: list | None  # None unless data.label_key is set
    skipped: list[str]  # "file:line: reason" for each skipped line


def _records(cfg: DataConfig):
    """Yield (lineno, record or None, problem or None) for each non-blank line."""
    path = Path(cfg.prompts)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"malformed JSON: {e.msg} (column {e.colno})"
                continue
            if not isinstance(obj, dict) or cfg.prompt_key not in obj:
                yield lineno, None, f"missing field {cfg.prompt_key!r} (data.prompt_key)"
                continue
            value = obj[cfg.prompt_key]
            if not isinstance(value, str) or not value.strip():
                yield lineno, None, f"field {cfg.prompt_key!r} must be a non-empty string"
                continue
            if cfg.label_key is not None and cfg.label_key not in obj:
                yield lineno, None, f"missing field {cfg.label_key!r} (data.label_key)"
                continue
            yield lineno, obj, None


def _tokenize(text: str, tokenizer, cfg: DataConfig) -> list[int]:
    if cfg.apply_chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def load_prompts(cfg: DataConfig, tokenizer) -> PromptSet:
    """Read, check and tokenize every line. The first bad line is an error naming file and line, unless
    data.skip_bad_lines is set, in which case bad lines are skipped and listed in `skipped`."""
    path = Path(cfg.prompts)
    if not path.is_file():
        raise DataError(f"data.prompts: {str(path)!r} does not exist")
    out = PromptSet([], [], [] if cfg.label_key is not None else None, [])
    for lineno, obj, problem in _records(cfg):
        if obj is not None:
            ids = _tokenize(obj[cfg.prompt_key], tokenizer, cfg)
            if len(ids) > cfg.max_prompt_tokens:
                problem = f"prompt has {len(ids)} tokens, more than data.max_prompt_tokens={cfg.max_prompt_tokens}"
        if problem is not None:
            where = f"{path}:{lineno}: {problem}"
            if not cfg.skip_bad_lines:
                raise DataError(where + " (set data.skip_bad_lines=true to skip and count such lines)")
            out.skipped.append(where)
            continue
        out.texts.append(obj[cfg.prompt_key])
        out.ids.append(ids)
        if out.labels is not None:
            out.labels.append(obj[cfg.label_key])
    if not out.texts:
        raise DataError(f"data.prompts: {path} has no usable prompts" + (f" ({len(out.skipped)} skipped)" if out.skipped else ""))
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
