"""Human preference collection without a server: the candidates file's checks, the SQLite store (assignment,
resume, overlap under threads, votes never replaced), votes as outcomes and pairs, agreement by hand, and the
export read back by the reward-model and DPO stages' own loaders."""
import json
import threading

import pytest

from rlhf_dist.collect.export import export_pairs, vote_pairs
from rlhf_dist.collect.items import Item, read_items
from rlhf_dist.collect.outcomes import agreement, kappa, pairs_of, ranks_from_choice
from rlhf_dist.collect.store import Store, VoteRefused, read_votes
from rlhf_dist.config import ConfigError


def write_items(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def items(n, k=2):
    return [Item(f"i{i}", f"prompt {i}", tuple(f"r{i}-{j}" for j in range(k))) for i in range(n)]


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "p", "responses": ["a"]}\n', "holds 1 responses; people compare 2 to 8"),
    ('{"prompt": "p", "responses": "ab"}\n', "field 'responses' must be a list"),
    ('{"prompt": "p", "responses": ["a", 3]}\n', "response 1 of 'responses' is not a string"),
    ('{"responses": ["a", "b"]}\n', "missing field 'prompt'"),
    ('{"prompt": "p", "responses": ["a", "b"], "id": "../x"}\n', "field 'id' must be"),
    ('{"prompt": "p", "responses": ["a", "b"], "id": "x"}\n{"prompt": "q", "responses": ["a", "b"], "id": "x"}\n',
     "c.jsonl:2: id 'x' was already given at"),
    ('{"prompt": "p", "responses": ["a", "b"]}\n{nope\n', "c.jsonl:2: malformed JSON"),
    ("", "holds no items"),
])
def test_bad_candidates_files_are_named_by_line(tmp_path, text, message):
    (tmp_path / "c.jsonl").write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        read_items(str(tmp_path / "c.jsonl"))
    assert message in str(e.value)


def test_items_resume_and_are_never_changed(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    assert store.add_items(items(3), "a") == (3, 0)
    assert store.add_items(items(4), "b") == (1, 3)  # a later round adds only the new item
    with pytest.raises(ConfigError, match="item 'i1' in c differs from the one in the store"):
        store.add_items([Item("i1", "prompt 1", ("changed", "r1-1"))], "c")
    assert store.count_items() == 4
    assert (tmp_path / "v.sqlite").stat().st_mode & 0o077 == 0  # tokens inside: owner only
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_assignment_resume_order_and_votes(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    store.add_items(items(3, k=3), "c")
    tokens = store.annotators(["ann", "bob"])
    assert store.who(tokens["ann"]) == "ann" and store.who("x" * 32) is None and store.who("") is None
    item, shown = store.next_item("ann", 1)
    assert item.id == "i0" and sorted(shown) == [0, 1, 2]
    assert store.next_item("ann", 1) == (item, shown)  # shown again until voted on (and after a restart)
    assert store.next_item("bob", 1)[0].id == "i1"  # overlap 1: i0 is ann's
    with pytest.raises(VoteRefused, match="not shown to ann in this order"):
        store.record("ann", "i0", [shown[1], shown[0], shown[2]], "tie", None, "")
    with pytest.raises(VoteRefused):
        store.record("ann", "i1", shown, "tie", None, "")  # bob's item
    assert store.record("ann", "i0", shown, "prefer", [1, 2, 3], "why") is True
    assert store.record("ann", "i0", shown, "prefer", [1, 2, 3], "why") is False  # a second click: the same vote
    with pytest.raises(VoteRefused, match="a vote is never replaced"):
        store.record("ann", "i0", shown, "prefer", [3, 2, 1], "why")
    item2, shown2 = store.next_item("ann", 1)
    store.record("ann", item2.id, shown2, "skip", None, "")
    # ann skipped i2: it goes to bob after his own i1
    progress = {r["annotator"]: r for r in store.progress(1)}
    assert progress["ann"] == {"annotator": "ann", "voted": 1, "skipped": 1, "left": 0}
    assert progress["bob"]["left"] == 2
    votes = read_votes(tmp_path / "v.sqlite")  # read-only, beside the open store
    assert [(v["annotator"], v["item"], v["kind"]) for v in votes] == [("ann", "i0", "prefer"), ("ann", "i2", "skip")]
    assert votes[0]["shown"] == shown and votes[0]["rationale"] == "why"


def test_concurrent_annotators_never_share_a_slot(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    store.add_items(items(40), "c")
    names = [f"a{k}" for k in range(8)]
    store.annotators(names)
    got = {n: [] for n in names}

    def work(name):
        while (nxt := store.next_item(name, 2)) is not None:
            store.record(name, nxt[0].id, nxt[1], "tie", None, "")
            got[name].append(nxt[0].id)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = {}
    for ids in got.values():
        assert len(ids) == len(set(ids))
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    assert counts == {f"i{i}": 2 for i in range(40)}  # every item exactly twice (overlap 2), none more
    assert len(read_votes(tmp_path / "v.sqlite")) == 80


def test_choices_become_ranks_by_candidate_index():
    # A is candidate 1 on screen, B candidate 0.
    assert ranks_from_choice("A", [1, 0], None) == ("prefer", [2, 1])
    assert ranks_from_choice("B", [1, 0], None) == ("prefer", [1, 2])
    assert ranks_from_choice("tie", [1, 0], None) == ("tie", None)
    # Three shown as C, A, B -> candidates 2, 0, 1 ranked 1, 3, 2 on screen.
    assert ranks_from_choice("rank", [2, 0, 1], [1, 3, 2]) == ("prefer", [3, 2, 1])
    assert ranks_from_choice("rank", [2, 0, 1], [2, 2, 2]) == ("tie", None)
    assert ranks_from_choice("rank", [0, 1, 2], [1, 1, 3]) == ("prefer", [1, 1, 2])
    for bad in (("C", [0, 1], None), ("rank", [0, 1, 2], [1, 2]), ("rank", [0, 1, 2], [0, 1, 2]), ("A", [0, 1, 2], None)):
        with pytest.raises(ValueError):
            ranks_from_choice(*bad)
    assert pairs_of([1, 1, 2]) == ([(0, 2), (1, 2)], 1)


def vote(annotator, item, kind, ranks=None, responses=("x", "y")):
    return {"annotator": annotator, "item": item, "kind": kind, "ranks": ranks, "prompt": f"p-{item}",
            "responses": list(responses), "rationale": ""}


def test_pairs_and_counts_from_votes():
    votes = [vote("a", "1", "prefer", [2, 1]), vote("a", "2", "tie"), vote("a", "3", "both_bad"), vote("a", "4", "skip"),
             vote("a", "5", "prefer", [1, 2, 2], ("best", "mid", "mid2")), vote("a", "6", "prefer", [1, 2], ("same", "same")),
             vote("a", "7", "prefer", [1, 2], ("full", "  "))]
    rows, counts = vote_pairs(votes)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("y", "x"), ("best", "mid"), ("best", "mid2")]
    assert counts["votes_both_bad"] == 1 and counts["votes_skip"] == 1 and counts["votes_tie"] == 1
    assert counts["dropped_tie_pairs"] == 2  # the tie vote's pair and the ranking's tied pair
    assert counts["dropped_identical_pairs"] == 1 and counts["dropped_empty_pairs"] == 1


def test_agreement_by_hand():
    votes = [vote("a", "1", "prefer", [1, 2]), vote("b", "1", "prefer", [1, 2]),
             vote("a", "2", "prefer", [1, 2]), vote("b", "2", "prefer", [2, 1]),
             vote("a", "3", "tie"), vote("b", "3", "tie"), vote("a", "4", "skip"), vote("b", "4", "tie"),
             vote("a", "5", "prefer", [2, 1])]
    result = agreement(votes)
    assert result["items"] == 3 and result["unanimous"] == 2  # item 4: a skipped; item 5: one vote
    (row,) = result["pairs"]
    assert (row["items"], row["agreed"]) == (3, 2)
    # a: [1>2, 1>2, tie], b: [1>2, 2>1, tie]: observed 2/3, chance (2*1 + 1*1)/9 = 1/3, kappa = (2/3-1/3)/(2/3) = 0.5
    assert row["kappa"] == pytest.approx(0.5)
    assert kappa(["x", "x"], ["x", "x"]) is None


def test_export_is_read_by_the_rm_and_dpo_stages(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from rlhf_dist.config.stages import StageData
    from rlhf_dist.data.stage_data import load_examples

    store = Store(tmp_path / "v.sqlite")
    store.add_items([Item("a", "the cat", (" is <b>bold</b>", " is sad")), Item("b", "the dog", (" is old", " is new", " is red"))], "c")
    store.annotators(["ann"])
    first, shown = store.next_item("ann", 1)
    store.record("ann", first.id, shown, *ranks_from_choice("A", shown, None), "")
    second, shown = store.next_item("ann", 1)
    store.record("ann", second.id, shown, *ranks_from_choice("rank", shown, [1, 2, 3]), "")
    out = tmp_path / "pairs.jsonl"
    summary = export_pairs(str(tmp_path / "v.sqlite"), str(out))
    assert summary["pairs"] == 4 and summary["votes"] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["chosen"] == first.responses[shown_a := read_votes(tmp_path / "v.sqlite")[0]["shown"][0]]
    assert rows[0]["rejected"] == first.responses[1 - shown_a]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for kind in ("rm", "dpo"):
        assert len(load_examples(str(out), "data.train", kind, StageData(train=str(out)), tok)) == 4
    with pytest.raises(ConfigError, match="already exists"):
        export_pairs(str(tmp_path / "v.sqlite"), str(out))


def test_the_policy_may_be_a_model_or_a_run_directory(tmp_path):
    from rlhf_dist.commands.collect import policy_dir

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert policy_dir(str(tmp_path / "run"), tmp_path) == str(tmp_path / "run" / "final")
    assert policy_dir(str(tmp_path / "run" / "final"), tmp_path) == str(tmp_path / "run" / "final")
    assert policy_dir(str(tmp_path / "nope"), tmp_path) == str(tmp_path / "nope")  # left to the model checks
