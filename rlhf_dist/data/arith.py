"""A synthetic arithmetic task with verifiable answers, for demonstrating critic-free RL on CPU."""
from __future__ import annotations

import json
import random
from pathlib import Path


def arith_problems(max_operand: int = 9, seed: int = 0) -> list[dict]:
    """Every a+b with 0 <= a, b <= max_operand, shuffled: {"prompt": "3+4=", "answer": "7"}."""
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(rows)
    return rows


def write_arith_jsonl(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in arith_problems(**kwargs)))
    return path
