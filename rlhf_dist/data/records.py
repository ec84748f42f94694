"""Rows of a local dataset file, each with where it came from, so a bad row is reported as file:line.

JSONL is read line by line here (exact line numbers, malformed JSON and bad UTF-8 named as such); parquet goes
through the `datasets` library and rows are numbered from 1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from rlhf_dist.config import ConfigError


class DataError(ConfigError):
    pass


FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def read_records(path: str | Path, field: str) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yield (where, record, problem): a dict and None, or None and what is wrong with that row.
    `field` names the config field that gave the path, for the error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{field}: {str(path)!r} does not exist")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{field}: {str(path)!r} is neither .jsonl nor .parquet")
    yield from (_jsonl(path) if fmt == "jsonl" else _parquet(path))


def _jsonl(path: Path):
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, None, f"malformed JSON: {e.msg} (column {e.colno})"
                continue
            except RecursionError:  # brackets nested past the parser's stack
                yield where, None, "malformed JSON: nested too deeply"
                continue
            if not isinstance(obj, dict):
                yield where, None, "each line must be a JSON object"
                continue
            if problem := not_unicode(obj):
                yield where, None, problem
                continue
            yield where, obj, None


def not_unicode(obj) -> str | None:
    """JSON escapes can spell lone surrogates (\\ud800), which are not text: tokenizers fail on them later."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "holds text that is not valid Unicode (a lone surrogate escape such as \\ud800)"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    return None


def _parquet(path: Path):
    from datasets import Dataset

    try:
        table = Dataset.from_parquet(str(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem, said once
        raise DataError(f"{path}: cannot read as parquet: {type(e).__name__}: {e}") from None
    for i, row in enumerate(table, 1):
        yield f"{path} row {i}", row, None


def text_field(obj: dict, key: str, config_field: str) -> str | None:
    """None if obj[key] is a non-empty string, else the problem."""
    if key not in obj:
        return f"missing field {key!r} ({config_field})"
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        return f"field {key!r} must be a non-empty string"
    return None
