"""The SQLite state store: commits survive reopening, files are private, a corrupt store is moved aside."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from actors.runtime.state import CommittedState, StateStore


def test_commit_survives_reopening(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "data" / "state.db")
    store.commit("host", CommittedState({"hostname": "a"}, 1700000000.5, 42))
    store.close()
    reopened = StateStore(tmp_path / "data" / "state.db")
    assert reopened.load("host") == CommittedState({"hostname": "a"}, 1700000000.5, 42)
    assert reopened.load("user") == CommittedState()


def test_store_directory_is_0700_and_file_0600(tmp_path: Path) -> None:
    StateStore(tmp_path / "data" / "state.db").commit("host", CommittedState({}, None, 1))
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "state.db").stat().st_mode) == 0o600


def test_corrupt_store_is_moved_aside_with_a_warning_and_starts_fresh(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="hostaudit.state"):
        store = StateStore(path)
    assert store.load("host") == CommittedState()
    store.commit("host", CommittedState({"x": 1}, None, 3))
    assert [p.name for p in tmp_path.glob("state.db.corrupt-*")], "the corrupt file is kept for inspection"
    assert "moved it to" in caplog.text and "fresh baseline" in caplog.text


def test_a_corrupt_snapshot_row_gives_a_fresh_baseline_but_keeps_the_sequence(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.commit("user", CommittedState({"users": []}, 5.0, 17))
    store._db.execute("UPDATE dataset_state SET snapshot = '{broken' WHERE dataset = 'user'")
    assert store.load("user") == CommittedState(sequence=17)
