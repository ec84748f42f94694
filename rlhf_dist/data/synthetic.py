"""The pipeline demo's data, generated from a seed (the files in configs/data/pipeline/ are its output).

Prompts name a thing ("the cat"); demonstrations describe it with two adjectives ("is happy and dark").
Preferences prefer the response with more pleasant adjectives: separable, so a reward model can learn it,
and PPO against that model should move the SFT policy toward pleasant words.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = "cat dog bird fish tree house car road sun moon star river hill lake book cup door room apple bread".split()
PLEASANT = "good happy bright soft warm new".split()
UNPLEASANT = "bad sad dark hard cold old".split()


def _response(rng: random.Random, n_pleasant: int) -> str:
    words = rng.sample(PLEASANT, n_pleasant) + rng.sample(UNPLEASANT, 2 - n_pleasant)
    rng.shuffle(words)
    return f" is {words[0]} and {words[1]}"


def pleasant_count(text: str) -> int:
    return sum(w in PLEASANT for w in text.split())


def pleasant_score(prompt: str, response: str) -> float:
    """A rule judge for the labelling demo: pleasant minus unpleasant adjectives."""
    words = response.split()
    return float(sum(w in PLEASANT for w in words) - sum(w in UNPLEASANT for w in words))


def make_pipeline_data(out_dir: str | Path, n_sft: int = 1200, n_pairs: int = 1200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompt = lambda: f"the {rng.choice(NOUNS)}"  # noqa: E731
    rows = [{"prompt": prompt(), "response": _response(rng, rng.randint(0, 2))} for _ in range(n_sft)]
    _write(out / "sft.jsonl", rows)
    pairs = []
    for _ in range(n_pairs):
        better = rng.randint(1, 2)
        worse = rng.randint(0, better - 1)
        pairs.append({"prompt": prompt(), "chosen": _response(rng, better), "rejected": _response(rng, worse)})
    _write(out / "prefs.jsonl", pairs)
    _write(out / "prompts.jsonl", [{"prompt": f"the {n}"} for n in NOUNS])
    return out


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    import sys

    print(make_pipeline_data(sys.argv[1] if len(sys.argv) > 1 else "configs/data/pipeline"))
