"""The persistent store: generations and verdicts kept across runs, so that a rerun pays only for what is new.

An SQLite file (the standard library's; write-ahead log, so pytest-xdist workers and concurrent runs on one
host share it) under ``--aci-cache-dir`` (default ``PYTEST_ACI_STORE``, else ``<model cache>/store``). A
generation is keyed by what determines it: the model's fingerprint (a hash of its files' contents, not its
path or name), the backend and its engine arguments, the exact token ids of the context and the generation
settings; a verdict by the judge's fingerprint (its name, version, weights and settings) and its exact input.
A model that changes never meets an old entry. Least recently used entries go past ``--aci-cache-max-mb``.

A store that cannot be read (a corrupt or foreign file, one written by a newer version) is one warning line
and a fresh store in its place; an entry that cannot be read is a miss. ``--aci-no-cache`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_aci.backends import Completion
from pytest_aci.judges import Verdict
from pytest_aci.models import cache_dir

VERSION = 1  # of the store's layout: a store from a newer version is set aside, not read
FILE = "store.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, used REAL NOT NULL, PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE TABLE IF NOT EXISTS fingerprints (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, digest TEXT NOT NULL);
"""


def default_store_dir() -> Path | None:
    """``PYTEST_ACI_STORE`` (``off``: no store unless ``--aci-cache-dir`` asks), else ``<model cache>/store``."""

    env = os.environ.get("PYTEST_ACI_STORE")
    if env == "off":
        return None
    return Path(env).expanduser() if env else cache_dir() / "store"


def open_store(directory: Path | None, disabled: bool, max_mb: int) -> Store | None:
    """The session's store: ``--aci-cache-dir``, else the default; none under ``--aci-no-cache``."""
    if disabled:
        return None
    directory = directory if directory is not None else default_store_dir()
    return Store(directory, max_mb) if directory is not None else None


def digest(*parts: object) -> bytes:
    """A key: the sha256 of the parts' JSON (token ids, settings, texts: all JSON)."""
    return hashlib.sha256(json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8")).digest()


class Store:
    """Entries of a few kinds (``generation``, ``verdict``) in one SQLite file; ``warnings`` say what was set aside."""

    def __init__(self, directory: Path, max_mb: int = 2048):
        self.path = Path(directory) / FILE
        self.max_bytes = max_mb * 1024 * 1024
        self.warnings: list[str] = []
        self.hits: dict[str, int] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except (sqlite3.DatabaseError, _Newer) as exc:
            aside = self.path.with_name(f"{FILE}.unreadable-{int(time.time())}")
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.warnings.append(f"aci store {self.path}: {exc}; set aside as {aside.name}, starting a fresh store")
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(VERSION),))
            elif not row[0].isdigit() or int(row[0]) > VERSION:
                raise _Newer(f"written by a newer pytest-aci (store version {row[0]}, this one reads {VERSION})")
        except BaseException:
            db.close()
            raise
        return db

    def get_many(self, kind: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        keys = list(dict.fromkeys(keys))
        found: dict[bytes, bytes] = {}
        for first in range(0, len(keys), 500):  # SQLite's variable limit
            chunk = keys[first : first + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value FROM entries WHERE kind = ? AND key IN ({marks})", (kind, *chunk)
            )
            found.update(rows.fetchall())
        used = list(found)
        for first in range(0, len(used), 500):
            chunk = used[first : first + 500]
            marks = ",".join("?" * len(chunk))
            self._db.execute(
                f"UPDATE entries SET used = ? WHERE kind = ? AND key IN ({marks})", (time.time(), kind, *chunk)
            )
        self.hits[kind] = self.hits.get(kind, 0) + len(found)
        return found

    def put_many(self, kind: str, entries: Mapping[bytes, bytes]) -> None:
        if not entries:
            return
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", [(kind, k, v, now) for k, v in entries.items()]
            )
        self._evict()

    def _evict(self) -> None:
        """Past the size cap: the least recently used quarter of the entries goes."""
        pages, size = (self._db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "page_size"))
        if pages * size <= self.max_bytes:
            return
        count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        self._db.execute(
            "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries ORDER BY used LIMIT ?)",
            (max(1, count // 4),),
        )
        self._db.execute("VACUUM")

    def fingerprint(self, model_dir: Path) -> str:
        """The model's fingerprint: the sha256 of its files' names and contents, remembered per (size, mtime)."""
        files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
        stamp = json.dumps([(str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        row = self._db.execute("SELECT stamp, digest FROM fingerprints WHERE path = ?", (str(model_dir),)).fetchone()
        if row is not None and row[0] == stamp:
            return row[1]
        found = model_fingerprint(Path(model_dir), files)
        self._db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?)", (str(model_dir), stamp, found))
        return found

    def summary(self) -> str:
        return (
            f"store: {self.hits.get('generation', 0)} sequences and {self.hits.get('verdict', 0)} verdicts came from "
            f"{self.path}"
        )

    def close(self) -> None:
        self._db.close()


class _Newer(Exception):
    pass


def model_fingerprint(model_dir: Path, files: list[Path] | None = None) -> str:
    """sha256 over a model directory's files (their relative names and bytes)."""
    files = files if files is not None else sorted(p for p in model_dir.rglob("*") if p.is_file())
    total = hashlib.sha256()
    for path in files:
        total.update(str(path.relative_to(model_dir)).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                total.update(block)
    return total.hexdigest()


# --- what is stored ------------------------------------------------------------------------------


def completion_bytes(completion: Completion) -> bytes:
    return json.dumps([list(completion.token_ids), completion.text, completion.finish_reason]).encode("utf-8")


def completion_of(value: bytes) -> Completion | None:
    try:
        ids, text, finish = json.loads(value)
        return Completion(tuple(int(i) for i in ids), str(text), str(finish))
    except (ValueError, TypeError):
        return None


def stored_completions(store: Store, keys: Iterable[bytes]) -> dict[bytes, Completion]:
    """The completions earlier runs kept under these keys (an entry that cannot be read is a miss)."""
    values = store.get_many("generation", keys)
    return {key: completion for key, value in values.items() if (completion := completion_of(value)) is not None}


def keep_completions(store: Store, completions: Mapping[bytes, Completion]) -> None:
    store.put_many("generation", {key: completion_bytes(c) for key, c in completions.items()})


def verdict_of(value: bytes) -> Verdict | None:
    try:
        return Verdict.model_validate_json(value)
    except ValueError:
        return None
