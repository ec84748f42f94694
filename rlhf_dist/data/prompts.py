"""Prompt datasets: local JSONL, validated line by line before any actor starts."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_dist.config import ConfigError, DataConfig


class DataError(ConfigError):
    pass


def read_prompts(cfg: DataConfig) -> tuple[list[str], list | None]:
    """(prompts, labels); labels is None unless data.label_key is set, and then every line must have it."""
    path = Path(cfg.prompts)
    if not path.is_file():
        raise DataError(f"data.prompts: {str(path)!r} does not exist")
    prompts, labels = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict) or cfg.prompt_key not in obj:
                raise DataError(f"{path}:{lineno}: missing field {cfg.prompt_key!r} (data.prompt_key)")
            value = obj[cfg.prompt_key]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{lineno}: field {cfg.prompt_key!r} must be a non-empty string")
            if cfg.label_key is not None:
                if cfg.label_key not in obj:
                    raise DataError(f"{path}:{lineno}: missing field {cfg.label_key!r} (data.label_key)")
                labels.append(obj[cfg.label_key])
            prompts.append(value)
    if not prompts:
        raise DataError(f"data.prompts: {path} has no prompts")
    return prompts, (labels if cfg.label_key is not None else None)


def tokenize_prompts(prompts: list[str], tokenizer, cfg: DataConfig, path: str) -> list[list[int]]:
    out = []
    for i, text in enumerate(prompts):
        if cfg.apply_chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > cfg.max_prompt_tokens:
            raise DataError(
                f"{path}: prompt {i + 1} has {len(ids)} tokens, more than data.max_prompt_tokens={cfg.max_prompt_tokens}"
            )
        out.append(list(ids))
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
