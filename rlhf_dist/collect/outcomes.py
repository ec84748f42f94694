"""Votes as outcomes, pairs and agreement: plain functions over the store's rows (no I/O).

A vote's `ranks` hold one rank per response in the candidates file's order (1 is best; equal ranks are ties),
whatever order the annotator saw them in: the shown order is recorded beside it, and undone here once.
"""
from __future__ import annotations

import itertools
from collections import Counter

LETTERS = "ABCDEFGH"


def ranks_from_choice(choice: str, shown: list[int], form_ranks: list[int] | None) -> tuple[str, list[int] | None]:
    """(kind, ranks by candidate index) from what was clicked. `shown[p]` is the candidate at position p (A, B,
    ...); `form_ranks[p]` the rank typed for position p (rankings of more than two)."""
    k = len(shown)
    if choice in ("tie", "both_bad", "skip"):
        return choice, None
    if choice in LETTERS[:k] and k == 2:
        winner = LETTERS.index(choice)
        by_position = [1 if p == winner else 2 for p in range(k)]
    elif choice == "rank" and form_ranks is not None and len(form_ranks) == k:
        by_position = form_ranks
    else:
        raise ValueError(f"choice {choice!r} is not one of this item's votes")
    if any(not 1 <= r <= k for r in by_position):
        raise ValueError(f"ranks must be between 1 and {k}")
    ranks = [0] * k
    for p, r in enumerate(by_position):
        ranks[shown[p]] = r
    if len(set(ranks)) == 1:
        return "tie", None
    return "prefer", dense(ranks)


def dense(ranks: list[int]) -> list[int]:
    """[1, 3, 3] and [2, 5, 5] are the same ranking: [1, 2, 2]."""
    order = sorted(set(ranks))
    return [order.index(r) + 1 for r in ranks]


def pairs_of(ranks: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(better, worse) candidate indices for every pair the ranking orders, and how many pairs it ties."""
    ordered, ties = [], 0
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] == ranks[j]:
            ties += 1
        else:
            ordered.append((i, j) if ranks[i] < ranks[j] else (j, i))
    return ordered, ties


def outcome(vote: dict):
    """What two annotators agree or disagree on: the kind, and for a preference its ranking."""
    return (vote["kind"], tuple(vote["ranks"])) if vote["kind"] == "prefer" else (vote["kind"],)


def kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two annotators' outcomes on the same items; None when chance agreement is certain."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def agreement(votes: list[dict]) -> dict:
    """Items voted on (skips aside) by two or more annotators: per pair of annotators the items they share, how
    many they agree on exactly and Cohen's kappa; overall the items with one outcome from everyone."""
    by_item: dict[str, dict[str, tuple]] = {}
    for v in votes:
        if v["kind"] != "skip":
            by_item.setdefault(v["item"], {})[v["annotator"]] = outcome(v)
    shared = {item: who for item, who in by_item.items() if len(who) > 1}
    names = sorted({a for who in shared.values() for a in who})
    rows = []
    for x, y in itertools.combinations(names, 2):
        items = [i for i, who in shared.items() if x in who and y in who]
        if not items:
            continue
        a, b = [shared[i][x] for i in items], [shared[i][y] for i in items]
        agreed = sum(p == q for p, q in zip(a, b))
        rows.append({"annotators": f"{x} / {y}", "items": len(items), "agreed": agreed, "agreement": agreed / len(items),
                     "kappa": kappa(a, b)})
    unanimous = sum(len(set(who.values())) == 1 for who in shared.values())
    return {"items": len(shared), "unanimous": unanimous, "pairs": rows}
