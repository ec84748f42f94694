"""Built-in environments: a calculator tool task, a Python tool task, and arithmetic with feedback (the CPU
demo's, which always answers the first turn, so every episode has two turns)."""
from __future__ import annotations

import ast
import operator
import re

from rlhf_dist.envs.base import Environment, Step, tool

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
LIMIT = 1e12  # the calculator's largest magnitude: arithmetic stays cheap and exact enough


def first_number(text: str) -> str | None:
    m = NUMBER.search(text)
    return m.group(0) if m else None


def same_number(text: str, label) -> bool:
    got = first_number(text)
    try:
        return got is not None and float(got) == float(str(label))
    except ValueError:
        return False


OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        v = node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand) * (-1 if isinstance(node.op, ast.USub) else 1)
    elif isinstance(node, ast.BinOp) and type(node.op) in OPS:
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
            raise ValueError("power too large")
        v = OPS[type(node.op)](a, b)
    else:
        raise ValueError("only numbers and + - * / // % ** ( ) are allowed")
    if isinstance(v, complex) or abs(v) > LIMIT:
        raise ValueError(f"result out of range (|x| <= {LIMIT:g})")
    return v


@tool(in_process=True)  # parses arithmetic (never eval): bounded by construction
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses."""
    if len(expression) > 200:
        return "error: expression longer than 200 characters"
    try:
        v = _value(ast.parse(expression, mode="eval").body)
    except ZeroDivisionError:
        return "error: division by zero"
    except (SyntaxError, ValueError, TypeError, OverflowError) as e:
        return f"error: {e}"
    return str(int(v)) if float(v).is_integer() else f"{v:.10g}"


@tool(in_process=True)  # starts its own confined interpreter (rlhf_dist.envs.sandbox.run_python)
def python(code: str) -> str:
    """Run Python code (standard library only) in a sandbox directory; returns what it prints."""
    raise RuntimeError("the rollout runs this tool through rlhf_dist.envs.sandbox.run_python")


python.rlhf_runs_code = True


class AnswerEnv(Environment):
    """A question from the data (`row['prompt']`) answered with a number equal to `row['label']`; the tools help.
    Reward: `correct` 1.0 for a right final answer (the first turn without a tool call), else 0."""

    reward_names = ("correct",)

    def reset(self, row: dict):
        self.label = row["label"]
        return [{"role": "system", "content": self.tool_prompt()}, {"role": "user", "content": row["prompt"]}]

    def step(self, text: str) -> Step:
        return Step(reward={"correct": 1.0 if same_number(text, self.label) else 0.0}, done=True)


class CalculatorEnv(AnswerEnv):
    tools = (calculator,)


class PythonEnv(AnswerEnv):
    tools = (python,)


class ArithFeedbackEnv(Environment):
    """The CPU demo's task: answer `row['prompt']` (e.g. '3+4='), told after each turn whether the answer was
    right, for `turns` turns (always all of them: the environment answers every turn but the last, so an
    episode has exactly `turns` turns). Reward per turn: `correct` 1/turns for a right answer, summed."""

    reward_names = ("correct",)

    def __init__(self, turns: int = 2):
        if not isinstance(turns, int) or turns < 1:
            raise ValueError("turns must be a positive integer")
        self.turns = turns

    def reset(self, row: dict):
        self.label, self.turn = row["label"], 0
        return row["prompt"]

    def step(self, text: str) -> Step:
        self.turn += 1
        right = same_number(text, self.label)
        done = self.turn >= self.turns
        observation = None if done else ("right. again:" if right else "wrong. again:")
        return Step(observation=observation, reward={"correct": (1.0 if right else 0.0) / self.turns}, done=done)
