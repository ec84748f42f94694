"""The candidates file: one JSON object per line, {"id", "prompt", "responses": [2..8 texts]}, read whole and
checked line by line before a store is opened or a port bound (errors name file:line)."""
from __future__ import annotations

import dataclasses
import json
import re

from rlhf_dist.config.collect import MAX_CANDIDATES
from rlhf_dist.data.records import DataError, read_records, text_field

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    responses: tuple[str, ...]

    def row(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "responses": list(self.responses)}


def _problem(obj: dict) -> str | None:
    if problem := text_field(obj, "prompt", "the prompt"):
        return problem
    responses = obj.get("responses")
    if not isinstance(responses, list):
        return "field 'responses' must be a list of 2 to %d strings" % MAX_CANDIDATES
    if not 2 <= len(responses) <= MAX_CANDIDATES:
        return f"field 'responses' holds {len(responses)} responses; people compare 2 to {MAX_CANDIDATES}"
    if bad := [i for i, r in enumerate(responses) if not isinstance(r, str)]:
        return f"response {bad[0]} of 'responses' is not a string"
    item_id = obj.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not ID.fullmatch(item_id)):
        return "field 'id' must be 1-100 letters, digits, '.', '_', ':' or '-' (starting with a letter or digit)"
    return None


def read_items(path: str) -> list[Item]:
    """Every item of the file, or a DataError naming the first bad line (or the line an id was first given on)."""
    items: list[Item] = []
    seen: dict[str, str] = {}
    for n, (where, obj, problem) in enumerate(read_records(path, "candidates"), 1):
        if obj is not None:
            problem = _problem(obj)
        if problem is not None:
            raise DataError(f"{where}: {problem}")
        item_id = obj.get("id") or f"item{n}"
        if item_id in seen:
            raise DataError(f"{where}: id {item_id!r} was already given at {seen[item_id]}")
        seen[item_id] = where
        items.append(Item(item_id, obj["prompt"], tuple(obj["responses"])))
    if not items:
        raise DataError(f"candidates: {path} holds no items (one JSON object per line: id, prompt, responses)")
    return items


def item_line(item: Item) -> str:
    return json.dumps(item.row(), ensure_ascii=False) + "\n"
