"""Votes -> preference pairs in the schema `rlhf-dist rm` and `rlhf-dist dpo` read (prompt, chosen, rejected).

A preference between two responses is one pair; a ranking of K is every pair it orders (equal ranks are ties).
Ties and "both bad" say which response is not better, so they are dropped and counted; skips are counted. A
pair whose two texts are equal, or with an empty side, is dropped and counted too (the stages refuse them).
Each vote gives its own pairs: two annotators who agree give the pair twice, two who disagree give both.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rlhf_dist.collect.outcomes import pairs_of
from rlhf_dist.collect.store import read_votes
from rlhf_dist.outputs import check_new_file, write_file


def vote_pairs(votes: list[dict]) -> tuple[list[dict], Counter]:
    rows, counts = [], Counter()
    for v in votes:
        counts[f"votes_{v['kind']}"] += 1
        if v["kind"] == "tie":
            counts["dropped_tie_pairs"] += len(v["responses"]) * (len(v["responses"]) - 1) // 2
        if v["kind"] != "prefer":
            continue
        ordered, ties = pairs_of(v["ranks"])
        counts["dropped_tie_pairs"] += ties
        for better, worse in ordered:
            chosen, rejected = v["responses"][better], v["responses"][worse]
            if chosen == rejected:
                counts["dropped_identical_pairs"] += 1
            elif not chosen.strip() or not rejected.strip():
                counts["dropped_empty_pairs"] += 1
            else:
                rows.append({"prompt": v["prompt"], "chosen": chosen, "rejected": rejected, "item": v["item"],
                             "annotator": v["annotator"], "rationale": v["rationale"]})
    counts["pairs"] = len(rows)
    return rows, counts


def export_pairs(store: str, out: str, force: bool = False) -> dict:
    """Write the pairs to `out` (JSONL, whole or not at all; an existing file only with force); the summary."""
    check_new_file(out, "OUT", force)
    votes = read_votes(store)
    rows, counts = vote_pairs(votes)
    write_file(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"store": str(store), "out": str(out), "votes": len(votes), "items": len({v["item"] for v in votes}),
            "annotators": len({v["annotator"] for v in votes}),
            **{k: counts[k] for k in ("pairs", "votes_prefer", "votes_tie", "votes_both_bad", "votes_skip",
                                      "dropped_tie_pairs", "dropped_identical_pairs", "dropped_empty_pairs")}}


def summary_text(s: dict) -> str:
    return (f"{s['pairs']} pairs written to {s['out']} from {s['votes']} votes on {s['items']} items by {s['annotators']} "
            f"annotator(s): {s['votes_prefer']} preferences, {s['votes_tie']} ties, {s['votes_both_bad']} both bad "
            f"(dropped), {s['votes_skip']} skipped; pairs dropped: {s['dropped_tie_pairs']} tied, "
            f"{s['dropped_identical_pairs']} with identical texts, {s['dropped_empty_pairs']} with an empty response")
