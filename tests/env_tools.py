"""Tools and environments for tests/test_envs.py. Tools run in a fresh interpreter per call, so they live in
an importable module; the hostile ones misbehave in each way a tool can."""
import os
import threading
import time

from rlhf_dist.envs.base import Environment, Step, tool


def add(a: int, b: int = 1) -> str:
    """Add two integers."""
    return str(a + b)


def hang(seconds: float) -> str:
    """Sleep far longer than any tool timeout."""
    time.sleep(seconds)
    return "woke"


def allocate(gigabytes: int) -> str:
    """Allocate memory."""
    block = bytearray(gigabytes << 30)
    return str(len(block))


def leave(code: int) -> str:
    """Exit the process without an answer."""
    os._exit(code)


def flood(megabytes: int) -> str:
    """Print a lot."""
    print("x" * (megabytes << 20), flush=True)
    return "printed"


def fail(message: str) -> str:
    """Raise."""
    raise ValueError(message)


RELEASE = threading.Event()


@tool(in_process=True)
def slow(tag: str) -> str:
    """Wait until the test releases it (in the run's process, so the test can)."""
    assert RELEASE.wait(60)
    return f"slow {tag}"


class ToolEnv(Environment):
    """Answers a tool call with the tool's output; a turn without one ends the episode with reward 1."""
    tools = (add, hang, allocate, leave, flood, fail, slow)

    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        return Step(reward={"answered": 1.0}, done=True)


class Countdown(Environment):
    """Never done: says `more` after every turn; reward 0.5 per turn (summed)."""

    def reset(self, row):
        return [{"role": "system", "content": "count"}, {"role": "user", "content": row["prompt"]}]

    def step(self, text):
        return Step(observation="more", reward=0.5)


STUCK = threading.Event()  # never set


class StuckStep(Environment):
    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        STUCK.wait(600)
        return Step(done=True)


class BrokenStep(Environment):
    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        raise KeyError("no such state")


class NoStep:
    def reset(self, row):
        return "x"


def untyped(x) -> str:
    return x


class UntypedTool(Environment):
    tools = (untyped,)


class NeedsKwarg(Environment):
    def __init__(self, level: int):
        self.level = level
