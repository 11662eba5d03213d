"""Fault tests of the durable spool: corruption, stray files, bogus cursors, reclaiming space, disk full, locks.

Real files throughout; disk-full tests use a real 1 MiB tmpfs (root only, else skipped).
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from actors.runtime.spool import (
    ACK_FILE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    READER_LOCK,
    RECORD_OVERHEAD,
    WRITER_LOCK,
    SpoolLockedError,
    SpoolReader,
    SpoolWriter,
    encode_record,
    segment_name,
    spool_size,
    unacknowledged_bytes,
)
from tests.unit.test_spool import read_available, segment_files, sequences

PAYLOAD = 100
RECORD = RECORD_OVERHEAD + PAYLOAD


def payload(sequence: int) -> bytes:
    return f"{sequence:09d}".encode() + bytes([sequence % 251]) * (PAYLOAD - 9)


def append_range(writer: SpoolWriter, first: int, last: int) -> None:
    writer.append([(sequence, payload(sequence)) for sequence in range(first, last + 1)])


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hostaudit.spool" and r.levelno == logging.WARNING]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "process"


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    return tmp_path / "corrupt"


@pytest.fixture
def spool_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="hostaudit.spool")
    return caplog


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


# --- 1. records carry a magic ------------------------------------------------------------------------------


def test_every_record_starts_with_the_magic_before_length_crc_and_sequence(directory: Path) -> None:
    with SpoolWriter(directory) as writer:
        writer.append([(7, b"hello"), (8, b"")])
    data = (directory / segment_name(7)).read_bytes()
    assert HEADER_SIZE == 20 and data[:4] == MAGIC == b"HAR2"
    # the body: an empty routing section (its length, 0) then the payload
    assert HEADER.unpack_from(data, 0)[1:2] == (4 + 5,) and HEADER.unpack_from(data, 0)[3] == 7
    assert data[HEADER_SIZE:HEADER_SIZE + 9] == b"\0\0\0\0hello"
    assert data == encode_record(7, b"hello") + encode_record(8, b"")


def test_a_record_carries_its_routing_values_in_a_section_before_the_payload(directory: Path) -> None:
    routing = {"host.id": "h1", "event.dataset": None, "x": "é"}
    with SpoolWriter(directory) as writer:
        writer.append([(7, b"hello", routing)])
    data = (directory / segment_name(7)).read_bytes()
    section = (b"\x07\x00host.id\x02\x00\x00\x00h1" + b"\x0d\x00event.dataset\xff\xff\xff\xff"
               + b"\x01\x00x\x02\x00\x00\x00\xc3\xa9")
    assert data[HEADER_SIZE:] == len(section).to_bytes(4, "little") + section + b"hello"
    assert data == encode_record(7, b"hello", routing)
    with SpoolReader(directory) as reader:
        (record,) = reader.read(10, 1 << 20)
    assert record.payload == b"hello" and dict(record.routing or {}) == routing


# --- 2. corruption is contained ----------------------------------------------------------------------------


def closed_segment_of_1000(directory: Path) -> Path:
    """Segment 1 holds sequences 1..1000 and is closed by segment 1001 (1001..1010)."""
    with SpoolWriter(directory, segment_bytes=1000 * RECORD) as writer:
        append_range(writer, 1, 1010)
    assert segment_files(directory) == [segment_name(1), segment_name(1001)]
    return directory / segment_name(1)


def test_random_bytes_in_the_middle_of_a_closed_segment_lose_only_the_record_they_hit(
    directory: Path, corrupt: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    segment = closed_segment_of_1000(directory)
    garbage = random.Random(5).randbytes(64)
    overwrite(segment, 500 * RECORD + 30, garbage)  # inside record 501 only
    with SpoolReader(directory, corrupt_dir=corrupt) as reader:
        got = read_available(reader)
    assert sequences(got) == [s for s in range(1, 1011) if s != 501]
    assert all(record.payload == payload(record.sequence) for record in got)
    [warning] = warnings_of(spool_log)
    assert str(segment) in warning and f"offset {500 * RECORD}" in warning and f"{RECORD} bytes" in warning
    copy = corrupt / f"process-{segment_name(1)}-{500 * RECORD}.bad"
    assert copy.read_bytes() == segment.read_bytes()[500 * RECORD : 501 * RECORD]


def test_garbled_first_header_loses_only_the_first_record(
    directory: Path, corrupt: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    segment = closed_segment_of_1000(directory)
    overwrite(segment, 0, b"\xff" * HEADER_SIZE)
    with SpoolReader(directory, corrupt_dir=corrupt) as reader:
        assert sequences(read_available(reader)) == list(range(2, 1011))
    [warning] = warnings_of(spool_log)
    assert "offset 0" in warning and f"{RECORD} bytes" in warning
    with SpoolWriter(directory) as writer:  # a damaged head does not hide the segment's records from the writer
        assert writer.last_sequence == 1010


def test_bogus_length_in_a_header_does_not_hide_the_records_after_it(directory: Path) -> None:
    segment = closed_segment_of_1000(directory)
    overwrite(segment, 10 * RECORD + 4, (2**31).to_bytes(4, "little"))  # record 11 claims 2 GiB
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [s for s in range(1, 1011) if s != 11]


def test_corruption_in_the_active_segment_is_skipped_as_soon_as_a_good_record_follows(
    directory: Path, corrupt: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 100)
        segment = directory / segment_name(1)
        overwrite(segment, 49 * RECORD + RECORD_OVERHEAD + 3, b"XX")  # payload of record 50
        reader = SpoolReader(directory, corrupt_dir=corrupt)
        assert sequences(read_available(reader)) == [s for s in range(1, 101) if s != 50]  # no need to wait
        assert len(warnings_of(spool_log)) == 1
        append_range(writer, 101, 110)  # the same, still active segment
        assert sequences(read_available(reader)) == list(range(101, 111))
        reader.close()
    assert len(warnings_of(spool_log)) == 1


def test_bad_tail_of_the_active_segment_waits_for_a_good_record_or_for_the_segment_to_close(
    directory: Path, corrupt: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 5)
    segment = directory / segment_name(1)
    with open(segment, "ab") as file:
        file.write(b"\x00" * 37)  # garbage where a record would be (a torn write, say)
    reader = SpoolReader(directory, corrupt_dir=corrupt)
    assert sequences(read_available(reader)) == [1, 2, 3, 4, 5]
    assert reader.read(10, 1 << 20) == [] and warnings_of(spool_log) == []
    with open(segment, "ab") as file:  # a good record lands after the garbage in the same segment
        file.write(encode_record(6, payload(6)))
    assert sequences(read_available(reader)) == [6]
    assert len(warnings_of(spool_log)) == 1 and (corrupt / f"process-{segment_name(1)}-{5 * RECORD}.bad").exists()
    reader.close()


def test_writer_reopened_on_a_corrupt_newest_segment_never_modifies_it(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 1000)
    segment = directory / segment_name(1)
    overwrite(segment, 300 * RECORD + 50, b"\x00" * 64)
    before = segment.read_bytes()
    with SpoolWriter(directory) as writer:
        assert writer.last_sequence == 1000  # found by resynchronising past the damage, not cut at it
        assert segment.read_bytes() == before
        append_range(writer, 1001, 1002)
    assert segment.read_bytes() == before
    assert segment_files(directory) == [segment_name(1), segment_name(1001)]
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [s for s in range(1, 1003) if s != 301]


# --- 3. stray files and bogus cursors -------------------------------------------------------------------------


def test_empty_stray_segment_is_not_the_newest_for_the_reader_nor_the_writer(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    writer = SpoolWriter(directory)
    append_range(writer, 1, 5)
    stray = directory / segment_name(99999)
    stray.touch()
    reader = SpoolReader(directory)
    assert sequences(read_available(reader)) == [1, 2, 3, 4, 5]
    append_range(writer, 6, 8)  # still segment 1: the stray did not close it for the reader
    assert sequences(read_available(reader)) == [6, 7, 8]
    writer.close()
    with SpoolWriter(directory) as reopened:
        assert reopened.last_sequence == 8
        append_range(reopened, 9, 9)
    assert not stray.exists() and segment_files(directory) == [segment_name(1), segment_name(9)]
    assert sequences(read_available(reader)) == [9]
    assert len([m for m in warnings_of(spool_log) if str(stray) in m]) == 1
    reader.close()


def test_stray_segment_whose_first_record_has_another_sequence_is_ignored_once_and_moved_aside(
    directory: Path, corrupt: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory, segment_bytes=3 * RECORD) as writer:
        append_range(writer, 1, 6)  # segments 1, 4
    middle = directory / segment_name(2)
    middle.write_bytes(encode_record(50, b"from elsewhere"))
    high = directory / segment_name(99999)
    high.write_bytes(encode_record(3, b"from elsewhere"))
    with SpoolReader(directory, corrupt_dir=corrupt) as reader:
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5, 6]
        assert sequences(read_available(reader)) == []
    assert len([m for m in warnings_of(spool_log) if str(middle) in m]) == 1
    assert not middle.exists() and (corrupt / f"process-{segment_name(2)}-0.bad").exists()
    with SpoolWriter(directory, corrupt_dir=corrupt) as writer:
        assert writer.last_sequence == 6  # no jump to 99999
        append_range(writer, 7, 7)
    assert segment_name(99999) not in segment_files(directory)


def test_cursor_naming_a_segment_newer_than_the_data_is_refused_and_the_writer_ignores_it(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 5)
    (directory / ACK_FILE).write_text(json.dumps({"segment": segment_name(99999), "offset": 120, "sequence": 99999}))
    with SpoolReader(directory) as reader:
        assert reader.acknowledged.segment == ""
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5]
    assert any("refused" in message for message in warnings_of(spool_log))
    (directory / ACK_FILE).write_text(json.dumps({"segment": segment_name(99999), "offset": 120, "sequence": 99999}))
    with SpoolWriter(directory) as writer:
        assert writer.last_sequence == 5


def test_cursor_with_a_sequence_beyond_the_last_good_record_is_refused(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 5)
    (directory / ACK_FILE).write_text(json.dumps({"segment": segment_name(1), "offset": 5 * RECORD, "sequence": 500}))
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5]
    assert any("refused" in message for message in warnings_of(spool_log))


def test_cursor_naming_a_deleted_fully_acknowledged_segment_stays_valid(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    with SpoolWriter(directory, segment_bytes=3 * RECORD) as writer:
        append_range(writer, 1, 9)  # segments 1, 4, 7
    reader = SpoolReader(directory)
    records = read_available(reader)
    reader.acknowledge(records[2].position)  # the end of closed segment 1: deleted
    reader.close()
    assert segment_files(directory) == [segment_name(4), segment_name(7)]
    with SpoolReader(directory) as restarted:
        assert restarted.acknowledged == records[2].position
        assert sequences(read_available(restarted)) == [4, 5, 6, 7, 8, 9]
    assert warnings_of(spool_log) == []


# --- 4. acknowledged bytes are reclaimed ---------------------------------------------------------------------


def test_unacknowledged_bytes_goes_to_zero_and_disk_use_stays_bounded_over_many_rolls(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    writer = SpoolWriter(root / "process", segment_bytes=64 * 1024, segment_max_age=0.0)  # a new segment per append
    reader = SpoolReader(root / "process")
    batch_bytes = 10 * RECORD
    peak = 0
    for first in range(1, 2001, 10):
        append_range(writer, first, first + 9)
        assert unacknowledged_bytes(root) == batch_bytes
        records = read_available(reader)
        assert sequences(records) == list(range(first, first + 10))
        reader.acknowledge(records[-1].position)
        assert unacknowledged_bytes(root) == 0
        peak = max(peak, spool_size(root))
    assert peak <= 2 * batch_bytes
    assert segment_files(root / "process") == [segment_name(1991)]
    writer.close()
    reader.close()


def test_a_segment_older_than_segment_max_age_is_not_appended_to(directory: Path) -> None:
    with SpoolWriter(directory, segment_max_age=0.2) as writer:
        append_range(writer, 1, 2)
        append_range(writer, 3, 4)
        assert segment_files(directory) == [segment_name(1)]
        time.sleep(0.25)
        append_range(writer, 5, 6)
    assert segment_files(directory) == [segment_name(1), segment_name(5)]


def test_unacknowledged_bytes_counts_segment_data_after_each_cursor(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    assert unacknowledged_bytes(root) == 0
    with SpoolWriter(root / "process", segment_bytes=3 * RECORD) as process, SpoolWriter(root / "socket") as socket:
        append_range(process, 1, 7)  # segments 1, 4, 7
        append_range(socket, 1, 4)
    with SpoolReader(root / "process") as reader:
        records = read_available(reader)
        reader.acknowledge(records[4].position)  # sequence 5: segment 1 deleted, 6..7 pending
    (root / "stray-file").write_bytes(b"x" * 1000)
    assert unacknowledged_bytes(root) == 2 * RECORD + 4 * RECORD  # no cursor for socket: all of it
    (root / "socket" / ACK_FILE).write_text(json.dumps({"segment": segment_name(1), "offset": RECORD, "sequence": 1}))
    assert unacknowledged_bytes(root) == 2 * RECORD + 3 * RECORD
    (root / "socket" / ACK_FILE).write_text("not json")
    assert unacknowledged_bytes(root) == 2 * RECORD + 4 * RECORD


# --- 5. disk full is a state -------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as error:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount: Path, leave: int = 0) -> Path:
    """Fill the file system with one file, then free `leave` bytes of it."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def test_acknowledge_on_a_full_disk_keeps_the_position_and_writes_the_cursor_once_space_frees(
    tiny_fs: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    directory = tiny_fs / "spool" / "process"
    writer = SpoolWriter(directory, segment_bytes=3 * RECORD)
    append_range(writer, 1, 9)  # segments 1, 4, 7
    reader = SpoolReader(directory)
    records = read_available(reader, max_records=4)
    filler = fill(tiny_fs)

    reader.acknowledge(records[0].position)  # no cursor file yet: it needs a block, and there is none
    assert reader.cursor_error is not None and "No space left" in reader.cursor_error
    assert not (directory / ACK_FILE).exists()
    assert not (directory / (ACK_FILE + ".tmp")).exists()
    reader.acknowledge(records[4].position)  # sequence 5: no exception
    assert reader.cursor_error is not None
    assert reader.acknowledged == records[4].position
    assert segment_files(directory) == [segment_name(4), segment_name(7)]  # still reclaims closed segments
    assert reader.read(100, 1 << 20) == []  # nothing is read again in this run

    reader.close()  # a crash now: the next reader resumes after the missing cursor segment
    with SpoolReader(directory) as crashed:
        assert sequences(read_available(crashed)) == [4, 5, 6, 7, 8, 9]
    fill(tiny_fs)  # deleting segment 1 freed a page
    reader = SpoolReader(directory)
    read_available(reader)
    reader.acknowledge(records[5].position)
    assert reader.cursor_error is not None

    filler.unlink()
    reader.acknowledge(records[5].position)  # the same position again: written now
    assert reader.cursor_error is None
    stored = (directory / ACK_FILE).read_text()
    assert {key: value for key, value in json.loads(stored).items() if key != "check"} == {
        "segment": segment_name(4),
        "offset": 3 * RECORD,
        "sequence": 6,
    }
    filler = fill(tiny_fs)
    reader.acknowledge(records[7].position)  # the cursor is rewritten in place: a full disk does not stop it
    assert reader.cursor_error is None and len((directory / ACK_FILE).read_bytes()) == len(stored)
    reader.close()
    with SpoolReader(directory) as restarted:
        assert restarted.acknowledged == records[7].position
    filler.unlink()
    writer.close()


def test_a_torn_cursor_is_detected_and_the_spool_is_sent_again(tmp_path: Path,
                                                              spool_log: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "spool" / "process"
    writer = SpoolWriter(directory, segment_bytes=3 * RECORD)
    append_range(writer, 1, 5)
    with SpoolReader(directory) as reader:
        records = read_available(reader)
        reader.acknowledge(records[1].position)
        reader.acknowledge(records[3].position)
    stored = (directory / ACK_FILE).read_bytes()
    torn = stored.replace(b'"sequence":4', b'"sequence":2')  # half of a rewrite reached the disk
    (directory / ACK_FILE).write_bytes(torn)
    with SpoolReader(directory) as restarted:
        assert restarted.acknowledged.segment == ""
        assert sequences(read_available(restarted)) == [4, 5]  # segment 1 was deleted: all that is left
    assert "does not match its checksum" in spool_log.text
    writer.close()


def test_append_on_a_full_disk_raises_keeps_last_sequence_exact_and_works_once_space_frees(tiny_fs: Path) -> None:
    directory = tiny_fs / "spool" / "process"
    writer = SpoolWriter(directory)
    reader = SpoolReader(directory)
    append_range(writer, 1, 100)
    filler = fill(tiny_fs, leave=20 * 1024)
    with pytest.raises(OSError) as raised:
        append_range(writer, 101, 600)  # about 60 KiB: some of it fits
    assert raised.value.errno == errno.ENOSPC
    stored = writer.last_sequence
    assert 100 <= stored < 600
    got = read_available(reader)
    assert sequences(got) == list(range(1, stored + 1))  # exactly what last_sequence says, complete
    with pytest.raises(OSError):
        append_range(writer, stored + 1, stored + 5)  # still full: a fresh segment, which fails too
    assert writer.last_sequence == stored
    assert all((directory / name).stat().st_size > 0 for name in segment_files(directory))  # none left empty

    filler.unlink()
    append_range(writer, stored + 1, stored + 50)
    assert writer.last_sequence == stored + 50
    assert segment_files(directory) == [segment_name(1), segment_name(stored + 1)]  # a fresh segment
    got += read_available(reader)
    assert sequences(got) == list(range(1, stored + 51))
    assert all(record.payload == payload(record.sequence) for record in got)
    writer.close()
    reader.close()
    with SpoolReader(directory) as restarted:
        assert sequences(read_available(restarted)) == list(range(1, stored + 51))


def test_a_failed_fsync_does_not_leave_the_writer_unusable(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An fsync error cannot be provoked on a real file system here (it needs a failing device): inject it.
    import actors.runtime.spool as spool

    real = spool._fdatasync
    failures = [OSError(errno.EIO, "Input/output error")]

    def fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(spool, "_fdatasync", fdatasync)
    reader = SpoolReader(directory)
    with SpoolWriter(directory) as writer:
        with pytest.raises(OSError):
            append_range(writer, 1, 5)
        assert writer.last_sequence == 5  # written (readable) though not known durable: never reused
        append_range(writer, 6, 8)
    assert segment_files(directory) == [segment_name(1), segment_name(6)]
    assert sequences(read_available(reader)) == list(range(1, 9))
    reader.close()


# --- 6. one writer and one reader per directory ----------------------------------------------------------


def test_a_second_writer_or_reader_is_refused_until_the_first_closes(directory: Path) -> None:
    writer = SpoolWriter(directory)
    reader = SpoolReader(directory)
    started = time.monotonic()
    with pytest.raises(SpoolLockedError) as raised:
        SpoolWriter(directory, lock_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    message = str(raised.value)
    assert str(directory) in message and f"pid {os.getpid()}" in message and "\n" not in message
    assert isinstance(raised.value, OSError)
    with pytest.raises(SpoolLockedError, match=f"pid {os.getpid()}"):
        SpoolReader(directory, lock_timeout=0)
    writer.close()
    reader.close()
    SpoolWriter(directory, lock_timeout=0).close()
    SpoolReader(directory, lock_timeout=0).close()
    assert sorted(os.listdir(directory)) == [READER_LOCK, WRITER_LOCK]
    assert spool_size(directory.parent) == 0 and unacknowledged_bytes(directory.parent) == 0


def hold_writer(directory: str, ready: multiprocessing.synchronize.Event) -> None:
    writer = SpoolWriter(Path(directory))
    ready.set()
    time.sleep(60)
    writer.close()


def test_the_lock_is_released_when_its_holder_dies(directory: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=hold_writer, args=(str(directory), ready), daemon=True)
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(SpoolLockedError, match=f"pid {child.pid}"):
            SpoolWriter(directory, lock_timeout=0.1)
        child.kill()
        child.join(10)
        SpoolWriter(directory, lock_timeout=5).close()
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
