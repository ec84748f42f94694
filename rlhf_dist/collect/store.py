"""The vote store: one SQLite file in WAL mode with synchronous=FULL, so a vote's commit is on disk before the
page says "saved", and a server killed with SIGKILL loses no acknowledged vote.

Tables: the items (loaded from candidates files, each in one transaction, never changed afterwards), the
annotators and their tokens, assignments (which annotator was shown which item, in which random order) and
votes (one row per vote, unique per annotator and item). Every read and write runs under one lock in one
connection: an item is assigned in one transaction, so two annotators never share a slot the overlap does
not allow, and nobody is shown an item that is not whole.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from rlhf_dist.collect.items import Item
from rlhf_dist.config import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(id TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, prompt TEXT NOT NULL,
                                 responses TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators(name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS assignments(annotator TEXT NOT NULL REFERENCES annotators(name), item TEXT NOT NULL
                                       REFERENCES items(id), shown TEXT NOT NULL, assigned_at REAL NOT NULL,
                                       PRIMARY KEY(annotator, item));
CREATE INDEX IF NOT EXISTS assignments_by_item ON assignments(item);
CREATE TABLE IF NOT EXISTS votes(seq INTEGER PRIMARY KEY AUTOINCREMENT, annotator TEXT NOT NULL, item TEXT NOT NULL,
                                 shown TEXT NOT NULL, kind TEXT NOT NULL, ranks TEXT, rationale TEXT NOT NULL,
                                 created_at REAL NOT NULL, UNIQUE(annotator, item),
                                 FOREIGN KEY(annotator, item) REFERENCES assignments(annotator, item));
"""
KINDS = ("prefer", "tie", "both_bad", "skip")
# Slots of an item: its assignments, less those its annotator skipped (a skipped item goes to someone else).
TAKEN = ("(SELECT COUNT(*) FROM assignments s WHERE s.item = i.id AND NOT EXISTS (SELECT 1 FROM votes v WHERE "
         "v.item = s.item AND v.annotator = s.annotator AND v.kind = 'skip'))")


class VoteRefused(Exception):
    """A vote the store will not take (not this annotator's item, a different second vote); its message is shown."""


def _create_private(path: Path) -> None:
    """The store holds the annotators' tokens: created readable by its owner only."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


class Store:
    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_symlink():
            raise ConfigError(f"--store: {str(path)!r} is a symbolic link; refusing to write through it")
        if path.is_dir():
            raise ConfigError(f"--store: {str(path)!r} is a directory, not a file")
        if not path.parent.is_dir():
            raise ConfigError(f"--store: the directory {str(path.parent)!r} does not exist")
        _create_private(path)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        try:
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.db.execute("PRAGMA synchronous=FULL")  # WAL commits are fsynced, not only written
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ConfigError(f"--store: {str(path)!r} is not a vote store ({e})") from None
        if mode.lower() != "wal":
            raise ConfigError(f"--store: {str(path)!r}: SQLite refused WAL mode here ({mode}); put the store on a local disk")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self):
        return _Transaction(self.db)

    # --- set-up ---

    def add_items(self, items: list[Item], source: str) -> tuple[int, int]:
        """Load items, all in one transaction: (added, already there). An id already stored with other content
        is an error: the votes on it refer to the stored text."""
        with self.lock, self._tx():
            stored = {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT id, prompt, responses FROM items")}
            start = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
            added = 0
            for item in items:
                text = json.dumps(list(item.responses), ensure_ascii=False)
                if item.id in stored:
                    if stored[item.id] != (item.prompt, text):
                        raise ConfigError(f"candidates: item {item.id!r} in {source} differs from the one in the store "
                                          f"{self.path} (votes refer to the stored text); give changed items new ids")
                    continue
                self.db.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (item.id, start + added, item.prompt, text))
                added += 1
        return added, len(items) - added

    def annotators(self, names: list[str]) -> dict[str, str]:
        """name -> token, creating tokens for new names (existing ones keep theirs, so their links still work)."""
        with self.lock, self._tx():
            for name in names:
                self.db.execute("INSERT OR IGNORE INTO annotators VALUES (?, ?)", (name, secrets.token_urlsafe(24)))
            return dict(self.db.execute("SELECT name, token FROM annotators"))

    def secret(self) -> bytes:
        """The key CSRF tokens are made with; kept in the store so pages open before a restart still submit."""
        with self.lock, self._tx():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            return bytes.fromhex(self.db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0])

    def who(self, token: str | None) -> str | None:
        """The annotator holding `token`, compared in constant time against every token."""
        if not token:
            return None
        with self.lock:
            rows = self.db.execute("SELECT name, token FROM annotators").fetchall()
        found = None
        for name, stored in rows:
            if hmac.compare_digest(stored.encode(), token.encode()):
                found = name
        return found

    # --- serving ---

    def item(self, item_id: str) -> Item:
        with self.lock:
            row = self.db.execute("SELECT id, prompt, responses FROM items WHERE id = ?", (item_id,)).fetchone()
        return Item(row[0], row[1], tuple(json.loads(row[2])))

    def next_item(self, annotator: str, overlap: int) -> tuple[Item, list[int]] | None:
        """The annotator's open item (resumed after a restart) or a new one, with its shown order; None when done."""
        with self.lock, self._tx():
            row = self.db.execute(
                "SELECT s.item, s.shown FROM assignments s JOIN items i ON i.id = s.item WHERE s.annotator = ? AND NOT "
                "EXISTS (SELECT 1 FROM votes v WHERE v.annotator = s.annotator AND v.item = s.item) ORDER BY i.position "
                "LIMIT 1", (annotator,)).fetchone()
            if row is None:
                new = self.db.execute(
                    f"SELECT i.id, i.responses FROM items i WHERE NOT EXISTS (SELECT 1 FROM assignments s WHERE "
                    f"s.item = i.id AND s.annotator = ?) AND {TAKEN} < ? ORDER BY i.position LIMIT 1",
                    (annotator, overlap)).fetchone()
                if new is None:
                    return None
                shown = list(range(len(json.loads(new[1]))))
                secrets.SystemRandom().shuffle(shown)  # the order each annotator sees, recorded with the vote
                row = (new[0], json.dumps(shown))
                self.db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?)", (annotator, new[0], row[1], time.time()))
        return self.item(row[0]), json.loads(row[1])

    def record(self, annotator: str, item_id: str, shown: list[int], kind: str, ranks: list[int] | None,
               rationale: str) -> bool:
        """Write one vote and commit it (fsynced). True: new; False: the same vote was already stored (a second
        click, a resubmitted form). VoteRefused for anything else."""
        assert kind in KINDS
        with self.lock, self._tx():
            got = self.db.execute("SELECT shown FROM assignments WHERE annotator = ? AND item = ?", (annotator, item_id)).fetchone()
            if got is None or json.loads(got[0]) != shown:
                raise VoteRefused(f"item {item_id!r} was not shown to {annotator} in this order; reload the page")
            old = self.db.execute("SELECT kind, ranks, rationale FROM votes WHERE annotator = ? AND item = ?",
                                  (annotator, item_id)).fetchone()
            ranks_text = None if ranks is None else json.dumps(ranks)
            if old is not None:
                if tuple(old) == (kind, ranks_text, rationale):
                    return False
                raise VoteRefused(f"{annotator} already voted on item {item_id!r}; a vote is never replaced")
            self.db.execute("INSERT INTO votes(annotator, item, shown, kind, ranks, rationale, created_at) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?)", (annotator, item_id, json.dumps(shown), kind, ranks_text, rationale, time.time()))
        return True

    def progress(self, overlap: int, annotator: str | None = None) -> list[dict]:
        """Per annotator (or for one): votes, skips, and items still left for them (their open one included)."""
        with self.lock:
            names = [annotator] if annotator else [r[0] for r in self.db.execute("SELECT name FROM annotators ORDER BY name")]
            out = []
            for name in names:
                voted, skipped = self.db.execute(
                    "SELECT COALESCE(SUM(kind != 'skip'), 0), COALESCE(SUM(kind = 'skip'), 0) FROM votes WHERE annotator = ?",
                    (name,)).fetchone()
                left = self.db.execute(
                    f"SELECT COUNT(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.item = i.id AND "
                    f"v.annotator = :a) AND (EXISTS (SELECT 1 FROM assignments s WHERE s.item = i.id AND s.annotator = :a) "
                    f"OR {TAKEN} < :k)", {"a": name, "k": overlap}).fetchone()[0]
                out.append({"annotator": name, "voted": voted, "skipped": skipped, "left": left})
            return out

    def votes(self) -> list[dict]:
        with self.lock:
            return _votes(self.db)

    def has_vote(self, annotator: str, item_id: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM votes WHERE annotator = ? AND item = ?", (annotator, item_id)).fetchone() is not None

    def count_items(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken up front, so a transaction never
    fails half-way for another writer."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


VOTES = ("SELECT v.seq, v.annotator, v.item, v.shown, v.kind, v.ranks, v.rationale, v.created_at, i.prompt, i.responses "
         "FROM votes v JOIN items i ON i.id = v.item ORDER BY v.seq")
VOTE_KEYS = ("seq", "annotator", "item", "shown", "kind", "ranks", "rationale", "created_at", "prompt", "responses")


def _votes(db) -> list[dict]:
    out = []
    for r in db.execute(VOTES).fetchall():
        v = dict(zip(VOTE_KEYS, r))
        v["shown"], v["responses"] = json.loads(v["shown"]), json.loads(v["responses"])
        v["ranks"] = None if v["ranks"] is None else json.loads(v["ranks"])
        out.append(v)
    return out


def read_votes(path: str | Path) -> list[dict]:
    """Every vote with its item, read-only (the export; a running server may go on writing), in the order cast."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"STORE: {str(path)!r} does not exist")
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            return _votes(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"STORE: {str(path)!r} is not a vote store ({e})") from None
