"""The per-dataset state store: the last committed snapshot, state-report time and sequence, in SQLite."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("hostaudit.state")

SCHEMA = """
CREATE TABLE IF NOT EXISTS dataset_state (
    dataset TEXT PRIMARY KEY,
    snapshot TEXT,              -- JSON of the last committed snapshot, NULL before the first commit
    last_state_report REAL,     -- epoch seconds of the last full state report, NULL if none yet
    sequence INTEGER NOT NULL   -- the last event.sequence handed on (spooled)
)
"""


@dataclass(frozen=True)
class CommittedState:
    """What a dataset committed last: the snapshot it reported, when it last sent a full state, its sequence."""

    snapshot: Any = None
    last_state_report: float | None = None
    sequence: int = 0


def snapshot_json(snapshot: Any) -> str:
    """A snapshot as compact JSON text: orjson (a tenth of the json module's time: a process snapshot holds every
    process of the host), else the json module for what orjson refuses (a lone surrogate, an int past 64 bits),
    which escapes it so that it loads back the same."""
    try:
        return orjson.dumps(snapshot, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(snapshot, separators=(",", ":"))


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 if missing, and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class StateStore:
    """One SQLite file under path.data shared by all datasets; each dataset process opens its own connection.

    A corrupt or unreadable store is moved aside with a warning and replaced by an empty one, so a dataset
    starts from a fresh baseline instead of crashing the agent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        ensure_private_dir(path.parent)
        self._db = self._open_or_replace()

    def _open_or_replace(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError as error:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("state store %s is unreadable (%s); moved it to %s and starting from a fresh baseline",
                        self.path, error, aside)
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                pass  # another process moved it aside first
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            return self._open()

    def _open(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            db.execute("SELECT count(*) FROM dataset_state").fetchone()
            db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        os.chmod(self.path, 0o600)
        return db

    def load(self, dataset: str) -> CommittedState:
        """Return the dataset's committed state (empty if it never committed or its row is unreadable)."""
        row = self._db.execute(
            "SELECT snapshot, last_state_report, sequence FROM dataset_state WHERE dataset = ?", (dataset,)
        ).fetchone()
        if row is None:
            return CommittedState()
        snapshot_json, last_state_report, sequence = row
        try:
            snapshot = json.loads(snapshot_json) if snapshot_json is not None else None
        except ValueError as error:
            log.warning("state of dataset %s in %s is corrupt (%s); starting from a fresh baseline",
                        dataset, self.path, error)
            return CommittedState(sequence=int(sequence))
        return CommittedState(snapshot, last_state_report, int(sequence))

    def commit(self, dataset: str, state: CommittedState) -> None:
        """Atomically replace the dataset's committed state. Call only after its events are spooled."""
        self._db.execute(
            "INSERT INTO dataset_state (dataset, snapshot, last_state_report, sequence) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(dataset) DO UPDATE SET snapshot = excluded.snapshot, "
            "last_state_report = excluded.last_state_report, sequence = excluded.sequence",
            (dataset, snapshot_json(state.snapshot) if state.snapshot is not None else None,
             state.last_state_report, state.sequence),
        )

    def close(self) -> None:
        self._db.close()
