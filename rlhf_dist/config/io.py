"""Reading configs: YAML files and dotted CLI overrides to a validated config, with errors worded in one line
naming the file:line, the override or the field."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhf_dist.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {text!r}: the key {key!r} has an empty part (dotted.key=value)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it") from None
    return keys, value


def overrides_by_prefix(overrides: list[str], names: tuple[str, ...], command: str, word: str) -> dict[str, list[str]]:
    """'rm:train.epochs=2' -> {'rm': ['train.epochs=2'], ...} for a command made of several configs (`names`);
    `word` names a part in the error (STAGE, STEP)."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for text in overrides:
        name, sep, rest = text.partition(":")
        if not sep or name not in out:
            raise ConfigError(f"{command} override {text!r} must look like {word}:dotted.key=value with {word} one of {', '.join(names)}")
        out[name].append(rest)
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    return " ".join(str(getattr(e, "problem", None) or e).split())


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[:-1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against docs/config.md)"
        lines.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(lines)  # one line, however many fields are wrong


def read_config_data(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> dict:
    """The YAML file's mapping (over `base`), with dotted overrides applied; not yet validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            raise ConfigError(f"{p}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"config file {str(p)!r}: cannot be read ({e.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    if base is not None:
        data = {**base, **data}
    return apply_overrides(data, overrides or [])


def validate(cls, data: dict):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def to_yaml(cfg) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
