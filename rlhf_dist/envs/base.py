"""The environment contract: what a user writes to turn single-turn generation into an agent episode.

An environment is a class. The rollout makes one instance per trajectory, with the config's `env.kwargs`:

    class MyEnv(Environment):
        tools = (my_tool,)                     # plain typed functions the model may call (optional)

        def reset(self, row) -> str | list[dict]:
            return row["prompt"]               # the first user turn, or a list of chat messages

        def step(self, text) -> Step:          # the model's turn when it called no tool
            return Step(observation="try again", reward=0.0, done=False)

A turn that holds a tool call (`parse_tool_call`) runs the tool instead of `step`: the tool's output (bounded,
rlhf_dist.envs.sandbox) becomes the next message, with role `tool`. Observations are text or chat messages;
they are appended as tokens, never re-rendering the history (rlhf_dist.rollout.multiturn).

Nothing here imports torch, pydantic or the rest of the package: tool calls import the tool's module in a
fresh interpreter, and that must stay cheap.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from typing import Any, Callable

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclasses.dataclass
class Step:
    """What `step` returns. `reward`: this turn's part (a number, or named parts); parts are summed over the
    turns and join the scorer's under their names ('env' for a plain number). `done`: the episode is over."""
    observation: str | list[dict] | None = None
    reward: float | dict[str, float] = 0.0
    done: bool = False


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


class ToolError(ValueError):
    """A tool call the model got wrong (unknown tool, bad arguments): shown to the model, counted."""


def tool(fn: Callable | None = None, *, in_process: bool = False):
    """Declare a function as a tool (optional: plain functions in `tools` are tools too). By default each
    call runs in a fresh interpreter with CPU, memory, wall-clock and output limits. `in_process=True` is for
    tools whose work is bounded by construction or isolated by themselves (the built-in calculator parses
    arithmetic; the Python tool starts its own sandboxed process): they run in a thread of the run's process."""
    def mark(f: Callable) -> Callable:
        f.rlhf_in_process = in_process
        return f

    return mark(fn) if fn is not None else mark


def tool_schema(fn: Callable) -> dict:
    """A function's name, docstring and annotations as a JSON-schema tool description."""
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args and **kwargs cannot be described to the model")
        kind = hints.get(name)
        if kind not in JSON_TYPES:
            raise TypeError(f"tool {fn.__name__}: argument {name!r} needs an annotation of str, int, float, bool, list or dict")
        props[name] = {"type": JSON_TYPES[kind]}
        if p.default is p.empty:
            required.append(name)
    doc = inspect.getdoc(fn) or ""
    return {"type": "function", "function": {"name": fn.__name__, "description": doc,
                                             "parameters": {"type": "object", "properties": props, "required": required}}}


def check_arguments(fn: Callable, arguments: Any) -> dict:
    """The call's arguments checked against the tool's annotations (the model's JSON is untrusted)."""
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments of {fn.__name__} must be a JSON object")
    hints = typing.get_type_hints(fn)
    params = inspect.signature(fn).parameters
    for name in arguments:
        if name not in params:
            raise ToolError(f"{fn.__name__} has no argument {name!r}")
    for name, p in params.items():
        if name not in arguments:
            if p.default is p.empty:
                raise ToolError(f"{fn.__name__} needs argument {name!r}")
            continue
        want, got = hints[name], arguments[name]
        ok = isinstance(got, want) and not (want is not bool and isinstance(got, bool))
        if want is float and isinstance(got, int) and not isinstance(got, bool):
            ok = True
        if not ok:
            raise ToolError(f"{fn.__name__}: argument {name!r} must be {JSON_TYPES[want]}")
    return arguments


TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class Environment:
    """Subclass and override `reset` and `step`; `tools` and `parse_tool_call` are optional."""

    tools: tuple = ()
    # The reward parts `step` may give (optional): an `eval.pass_function` naming one is then checked before
    # anything starts; without it, at the first evaluation.
    reward_names: tuple[str, ...] = ()

    def reset(self, row: dict) -> str | list[dict]:
        """`row`: the dataset line's prompt (`row['prompt']`) and label (`row['label']`, None without
        data.label_key). Returns the first user turn, or chat messages (a system turn, say)."""
        raise NotImplementedError

    def step(self, text: str) -> Step:
        """The model's turn (text, special tokens removed) when it called no tool."""
        raise NotImplementedError

    def parse_tool_call(self, text: str) -> ToolCall | None:
        """The turn's tool call, if any: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the
        format Qwen2-style chat models are trained on). Malformed JSON inside the tags is a ToolError."""
        if not self.tools:
            return None
        m = TOOL_CALL.search(text)
        if m is None:
            return None
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            raise ToolError("the tool call is not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ToolError('a tool call looks like {"name": ..., "arguments": {...}}')
        return ToolCall(obj["name"], obj.get("arguments", {}))

    def close(self) -> None:
        """Called once the trajectory is finished (release what reset set up)."""

    def tool_named(self, name: str) -> Callable:
        for fn in self.tools:
            if fn.__name__ == name:
                return fn
        names = ", ".join(f.__name__ for f in self.tools)
        raise ToolError(f"no tool named {name[:60]!r} (tools: {names})")

    def tool_prompt(self) -> str:
        """A system message describing the tools and the call format (for reset to include)."""
        schemas = "\n".join(json.dumps(tool_schema(f)) for f in self.tools)
        return ("You may call a tool by writing <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>. "
                f"Tools:\n{schemas}")


def reward_parts(reward: float | dict[str, float]) -> dict[str, float]:
    """A step's reward as named parts; a value that is not a finite number is the environment's bug."""
    parts = {"env": reward} if not isinstance(reward, dict) else reward
    out = {}
    for k, v in parts.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise TypeError(f"reward part {k!r} is {v!r:.60}, not a finite number")
        out[str(k)] = float(v)
    return out
