"""What a model directory must hold, checked by reading small files only (no weights are loaded):
a config.json that parses and names an architecture the role can load, a tokenizer where one is needed,
and weights whose safetensors headers are intact."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from rlhf_dist.config import ConfigError

CAUSAL = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Reward models and critics: a sequence-classification head, or a causal LM whose body gets a fresh head.
SCORING = CAUSAL + ("ForSequenceClassification", "ForTokenClassification")
# The field names whose models are scored (value/reward heads); every other model field is a causal LM.
SCORING_FIELDS = {"model.critic", "reward.model", "judge.model"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
MAX_HEADER = 100 * 2**20


def read_config_json(field: str, path: Path) -> dict:
    file = path / "config.json"
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{field}: {file}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{field}: {file}:{e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise ConfigError(f"{field}: {file}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {file}: must be a JSON object")
    return data


def check_architecture(field: str, path: Path, config: dict) -> None:
    archs = config.get("architectures")
    if archs is None:
        return  # older exports omit it; model_type alone cannot tell the head
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs) or not archs:
        raise ConfigError(f"{field}: {path / 'config.json'}: 'architectures' must be a list of class names")
    accepted = SCORING if field in SCORING_FIELDS else CAUSAL
    if not any(a.endswith(accepted) for a in archs):
        want = "a causal LM or a sequence-classification model" if field in SCORING_FIELDS else "a causal LM (*ForCausalLM)"
        raise ConfigError(f"{field}: {path} is a {', '.join(archs)}; this role needs {want}")


def check_safetensors(field: str, file: Path) -> None:
    """The 8-byte length and the JSON header of a .safetensors file, against the file's size."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER, size - 8):
                raise ConfigError(f"{field}: {file}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{field}: {file}: not a safetensors file (header is not JSON)") from None
    except OSError as e:
        raise ConfigError(f"{field}: {file}: cannot be read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{field}: {file}: not a safetensors file (header is not an object)")
    room = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= room):
            raise ConfigError(f"{field}: {file}: tensor {name!r} lies outside the file (truncated or corrupt)")


def check_weights(field: str, path: Path) -> None:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{field}: {index}: not a valid safetensors index (no weight_map)") from None
        files = [path / s for s in shards]
        for f in files:
            if not f.is_file():
                raise ConfigError(f"{field}: {f} is listed in {index.name} but missing")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("pytorch_model*.bin")):
            return  # transformers reads these weights-only
        raise ConfigError(f"{field}: {path} holds no weights (model.safetensors)")
    for f in files:
        check_safetensors(field, f)


def check_tokenizer(field: str, path: Path) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"{field}: {path} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); save the model's tokenizer beside it"
        )


def check_model_dir(field: str, path: Path, needs_tokenizer: bool) -> None:
    if not os.path.lexists(path):
        raise ConfigError(f"{field}: {str(path)!r} does not exist")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"{field}: {str(path)!r} is not a HuggingFace model directory (no config.json there)")
    check_architecture(field, path, read_config_json(field, path))
    if needs_tokenizer:
        check_tokenizer(field, path)
    check_weights(field, path)
