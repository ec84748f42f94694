"""Environments by name: a built-in's, or a user's class by dotted path 'package.module:Class' (loaded as
reward functions are, with one-line errors naming env.name)."""
from __future__ import annotations

import inspect

from rlhf_dist.envs.base import tool_schema
from rlhf_dist.errors import ConfigError
from rlhf_dist.rewards.functions import import_named

BUILTINS = {
    "calculator": "rlhf_dist.envs.builtin:CalculatorEnv",
    "python": "rlhf_dist.envs.builtin:PythonEnv",
    "arith_feedback": "rlhf_dist.envs.builtin:ArithFeedbackEnv",
}


def load_environment(name: str, kwargs: dict | None = None) -> type:
    """The environment class `name` stands for, checked: it has reset and step, its tools describe
    themselves, and one instance can be made with `kwargs`."""
    where = BUILTINS.get(name, name)
    module_name, colon, attr = where.partition(":")
    if not (colon and module_name.strip() and attr.strip()):
        raise ConfigError(f"env.name {name!r}: not a built-in ({', '.join(BUILTINS)}) and not 'package.module:Class'")
    module = import_named(module_name, f"env.name {name!r}")
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls):
        raise ConfigError(f"env.name {name!r}: {module_name!r} has no class {attr!r}")
    for method in ("reset", "step"):
        if not callable(getattr(cls, method, None)):
            raise ConfigError(f"env.name {name!r}: {attr} has no {method}() method")
    for fn in getattr(cls, "tools", ()):
        if not callable(fn) or not getattr(fn, "__name__", None):
            raise ConfigError(f"env.name {name!r}: {attr}.tools holds {fn!r:.60}, not a function")
        try:
            tool_schema(fn)
        except TypeError as e:
            raise ConfigError(f"env.name {name!r}: {e}") from None
        if not getattr(fn, "rlhf_in_process", False) and ("<locals>" in fn.__qualname__ or fn.__module__ == "__main__"):
            raise ConfigError(f"env.name {name!r}: tool {fn.__name__} must be a module-level function of an importable "
                              "module (each call imports it in a fresh interpreter)")
    try:
        cls(**(kwargs or {})).close()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"env.kwargs: {attr}(**{kwargs or {}}) failed: {type(e).__name__}: {e}") from None
    return cls
