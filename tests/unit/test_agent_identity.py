"""agent.json and digest.key in path.data: created once, kept, and replaced with a warning when unusable."""

from __future__ import annotations

import json
import logging
import multiprocessing
import stat
import uuid
from pathlib import Path

import pytest

from actors.runtime.agent import load_agent_identity, load_digest_key


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_agent_id_is_created_once_0600_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_agent_identity(tmp_path)
    meta = tmp_path / "agent.json"
    assert json.loads(meta.read_text()) == {"id": first.id} and uuid.UUID(first.id)
    assert stat.S_IMODE(meta.stat().st_mode) == 0o600
    second = load_agent_identity(tmp_path)
    assert second.id == first.id and second.ephemeral_id != first.ephemeral_id
    assert warnings_of(caplog) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["agent.json"]


@pytest.mark.parametrize("content", [b"", b"garbage{", b"[]", b'{"id": "not-a-uuid"}', b'{"ident": 1}',
                                     b'{"id": 42}', b"\xff\xfe\x00binary", b'"just a string"'])
def test_a_garbage_agent_json_is_moved_aside_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             content: bytes) -> None:
    meta = tmp_path / "agent.json"
    meta.write_bytes(content)
    identity = load_agent_identity(tmp_path)
    uuid.UUID(identity.id)
    assert json.loads(meta.read_text()) == {"id": identity.id}
    aside = [path for path in tmp_path.iterdir() if path.name.startswith("agent.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert aside[0].name.removeprefix("agent.json.corrupt-").isdigit()
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and str(meta) in warnings[0] and aside[0].name in warnings[0], warnings
    assert "\n" not in warnings[0]
    caplog.clear()
    assert load_agent_identity(tmp_path).id == identity.id and warnings_of(caplog) == []


def test_an_unreadable_agent_json_is_moved_aside_with_one_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    meta = tmp_path / "agent.json"
    meta.mkdir()  # unreadable as a file (EISDIR), whoever runs the test
    identity = load_agent_identity(tmp_path)
    assert json.loads(meta.read_text()) == {"id": identity.id}
    assert [path.is_dir() for path in tmp_path.iterdir() if path.name.startswith("agent.json.corrupt-")] == [True]
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and str(meta) in warnings[0]


def test_a_valid_agent_json_is_read_as_it_is(tmp_path: Path) -> None:
    known = str(uuid.uuid4())
    (tmp_path / "agent.json").write_text(json.dumps({"id": known.upper()}))
    assert load_agent_identity(tmp_path).id == known


def test_digest_key_is_created_once_0600_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = load_digest_key(tmp_path)
    assert len(key) == 32 and load_digest_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "digest.key").stat().st_mode) == 0o600
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("content", [b"", b"x", b"fifteen bytes!!"])
def test_an_empty_or_short_digest_key_is_regenerated_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   content: bytes) -> None:
    key_path = tmp_path / "digest.key"
    key_path.write_bytes(content)
    key = load_digest_key(tmp_path)
    assert len(key) == 32 and key_path.read_bytes() == key
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and str(key_path) in warnings[0], warnings
    assert f"{len(content)} bytes" in warnings[0]
    caplog.clear()
    assert load_digest_key(tmp_path) == key and warnings_of(caplog) == []


def test_a_16_byte_digest_key_is_kept(tmp_path: Path) -> None:
    (tmp_path / "digest.key").write_bytes(b"0123456789abcdef")
    assert load_digest_key(tmp_path) == b"0123456789abcdef"


def _first_start(path_data: str, barrier: "multiprocessing.synchronize.Barrier", results: "multiprocessing.Queue") -> None:
    barrier.wait()
    identity = load_agent_identity(Path(path_data))
    results.put((identity.id, load_digest_key(Path(path_data))))


@pytest.mark.parametrize("prepare", ["absent", "corrupt"])
def test_concurrent_first_starts_agree_on_one_id_and_one_key(tmp_path: Path, prepare: str) -> None:
    if prepare == "corrupt":
        (tmp_path / "agent.json").write_text("{garbage")
        (tmp_path / "digest.key").write_bytes(b"")
    context = multiprocessing.get_context("fork")
    count = 8
    barrier, results = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_first_start, args=(str(tmp_path), barrier, results)) for _ in range(count)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert len(set(outcomes)) == 1
    agent_id, key = outcomes[0]
    assert json.loads((tmp_path / "agent.json").read_text()) == {"id": agent_id}
    assert (tmp_path / "digest.key").read_bytes() == key and len(key) == 32
    leftovers = [path.name for path in tmp_path.iterdir() if path.name.startswith(".") and path.name.endswith((".new", ".tmp"))]
    assert leftovers == []
    if prepare == "corrupt":
        assert len([path for path in tmp_path.iterdir() if path.name.startswith("agent.json.corrupt-")]) == 1
