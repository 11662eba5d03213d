"""Tests of the durable spool: real files, a writer and a reader in separate processes, crashes and corruption."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.runtime.spool import (
    ACK_FILE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAGIC_V1,
    RECORD_OVERHEAD,
    SpooledRecord,
    SpoolPosition,
    SpoolReader,
    SpoolWriter,
    segment_name,
    spool_size,
)

DEADLINE_SECONDS = 60.0


def payload_for(sequence: int) -> bytes:
    """A payload that identifies its sequence, 0 to ~2000 bytes long."""
    return f"event {sequence};".encode() + bytes([sequence % 251]) * (sequence * 7919 % 2000)


def encode(sequence: int, payload: bytes) -> bytes:
    """One record exactly as the spool stores it (HAR2, no routing values: an empty routing section)."""
    body = (0).to_bytes(4, "little") + payload
    checksum = crc32c(sequence.to_bytes(8, "little") + body)
    return HEADER.pack(MAGIC, len(body), checksum, sequence) + body


def encode_v1(sequence: int, payload: bytes) -> bytes:
    """One record exactly as the previous version's writer stored it (HAR1: the payload alone)."""
    checksum = crc32c(sequence.to_bytes(8, "little") + payload)
    return HEADER.pack(MAGIC_V1, len(payload), checksum, sequence) + payload


def append_range(writer: SpoolWriter, first: int, last: int) -> None:
    writer.append([(sequence, payload_for(sequence)) for sequence in range(first, last + 1)])


def read_available(reader: SpoolReader, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[SpooledRecord]:
    """Read until the reader reports nothing more is complete."""
    records: list[SpooledRecord] = []
    while batch := reader.read(max_records, max_bytes):
        records.extend(batch)
    return records


def sequences(records: list[SpooledRecord]) -> list[int]:
    return [record.sequence for record in records]


def segment_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".seg"))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "process"


@pytest.fixture
def spool_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="hostaudit.spool")
    return caplog


def spool_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "hostaudit.spool" and record.levelno == level]


# --- round trip, limits, ordering -------------------------------------------------------------------------


def test_round_trip_returns_every_record_in_order_with_its_payload(directory: Path) -> None:
    with SpoolWriter(directory) as writer:
        written = writer.append([(sequence, payload_for(sequence)) for sequence in range(1, 201)])
        assert writer.last_sequence == 200
    assert written == sum(RECORD_OVERHEAD + len(payload_for(sequence)) for sequence in range(1, 201))
    with SpoolReader(directory) as reader:
        records = read_available(reader, max_records=64)
    assert sequences(records) == list(range(1, 201))
    assert all(record.payload == payload_for(record.sequence) for record in records)
    assert records[-1].position == SpoolPosition(segment_name(1), written, 200)


def test_reader_started_before_the_writer_sees_records_once_they_exist(directory: Path) -> None:
    reader = SpoolReader(directory)  # creates the directory (private) to hold its lock file, nothing else
    assert reader.read(100, 1 << 20) == []
    assert reader.pending_bytes() == 0 and not reader.has_pending()
    assert sorted(os.listdir(directory)) == ["reader.lock"]
    with SpoolWriter(directory) as writer:
        assert reader.read(100, 1 << 20) == []
        append_range(writer, 1, 3)
        assert reader.has_pending()
        assert sequences(reader.read(100, 1 << 20)) == [1, 2, 3]
        append_range(writer, 4, 5)
        assert sequences(reader.read(100, 1 << 20)) == [4, 5]
    reader.close()


def test_max_bytes_bounds_a_batch_but_a_larger_record_is_still_returned(directory: Path) -> None:
    with SpoolWriter(directory) as writer:
        writer.append([(1, b"a" * 100), (2, b"b" * 100), (3, b"c" * 5000), (4, b"d" * 10)])
    reader = SpoolReader(directory)
    assert sequences(reader.read(10, 250)) == [1, 2]
    assert sequences(reader.read(10, 250)) == [3]  # alone, larger than max_bytes, never stuck
    assert sequences(reader.read(10, 250)) == [4]
    assert reader.read(10, 250) == []
    reader.close()


def test_non_increasing_sequence_is_rejected_and_nothing_is_written(directory: Path) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 5)
        size = (directory / segment_name(1)).stat().st_size
        for bad_batch in ([(7, b"x"), (7, b"y")], [(9, b"x"), (8, b"y")], [(5, b"x")], [(0, b"x")], [(6, "text")]):
            with pytest.raises((ValueError, TypeError)):
                writer.append(bad_batch)  # type: ignore[arg-type]
        assert (directory / segment_name(1)).stat().st_size == size
        assert writer.last_sequence == 5
    with SpoolWriter(directory) as reopened:
        assert reopened.last_sequence == 5
        with pytest.raises(ValueError):
            reopened.append([(5, b"again")])
        reopened.append([(6, b"next")])
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5, 6]


# --- segments and acknowledgement ---------------------------------------------------------------------------


def test_segments_roll_at_the_size_limit_and_are_named_after_their_first_sequence(directory: Path) -> None:
    record_bytes = RECORD_OVERHEAD + 100
    with SpoolWriter(directory, segment_bytes=5 * record_bytes) as writer:
        writer.append([(sequence, b"p" * 100) for sequence in range(1, 13)])  # one batch over three segments
        writer.append([(13, b"big" * 1000)])  # larger than a segment: alone in its own
        writer.append([(14, b"p" * 100)])
    assert segment_files(directory) == [segment_name(sequence) for sequence in (1, 6, 11, 13, 14)]
    sizes = {name: (directory / name).stat().st_size for name in segment_files(directory)}
    assert sizes[segment_name(1)] == sizes[segment_name(6)] == 5 * record_bytes
    assert sizes[segment_name(11)] == 2 * record_bytes
    assert sizes[segment_name(13)] == RECORD_OVERHEAD + 3000
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader, max_records=4)) == list(range(1, 15))


def test_acknowledge_deletes_closed_segments_it_covers_and_never_the_newest(directory: Path) -> None:
    writer = SpoolWriter(directory, segment_bytes=3 * (RECORD_OVERHEAD + 10))
    writer.append([(sequence, b"0123456789") for sequence in range(1, 10)])  # segments 1, 4, 7
    reader = SpoolReader(directory)
    records = read_available(reader)
    assert sequences(records) == list(range(1, 10))

    reader.acknowledge(records[4].position)  # sequence 5, inside segment 4
    assert segment_files(directory) == [segment_name(4), segment_name(7)]
    reader.acknowledge(records[5].position)  # sequence 6 ends segment 4, which is closed: wholly acknowledged
    assert segment_files(directory) == [segment_name(7)]
    reader.acknowledge(records[8].position)  # the newest segment, wholly acknowledged, stays for the writer
    assert segment_files(directory) == [segment_name(7)]
    assert reader.pending_bytes() == 0 and not reader.has_pending()
    reader.acknowledge(records[2].position)  # going backwards is ignored
    assert {key: value for key, value in json.loads((directory / ACK_FILE).read_text()).items() if key != "check"} == {
        "segment": segment_name(7),
        "offset": 3 * (RECORD_OVERHEAD + 10),
        "sequence": 9,
    }

    writer.append([(10, b"0123456789")])  # starts segment 10: segment 7 is closed now, the reader moves on
    assert reader.pending_bytes() == RECORD_OVERHEAD + 10
    assert sequences(reader.read(10, 1 << 20)) == [10]
    writer.close()
    reader.close()


def test_restarted_reader_resends_exactly_the_unacknowledged_records(directory: Path) -> None:
    with SpoolWriter(directory, segment_bytes=8 * 1024) as writer:
        append_range(writer, 1, 100)
    first = SpoolReader(directory)
    records = read_available(first, max_records=7)
    assert sequences(records) == list(range(1, 101))
    first.acknowledge(records[39].position)  # the output confirmed 1..40, then the process died
    first.close()

    second = SpoolReader(directory)
    assert second.acknowledged == records[39].position
    assert second.pending_bytes() == sum(RECORD_OVERHEAD + len(payload_for(sequence)) for sequence in range(41, 101))
    assert sequences(read_available(second, max_records=9)) == list(range(41, 101))
    second.close()


def test_rewind_re_reads_from_the_acknowledged_position(directory: Path) -> None:
    with SpoolWriter(directory, segment_bytes=4 * 1024) as writer:
        append_range(writer, 1, 50)
    reader = SpoolReader(directory)
    assert sequences(reader.read(30, 1 << 30)) == list(range(1, 31))
    reader.rewind()  # nothing acknowledged yet: back to the very beginning
    batch = reader.read(10, 1 << 30)
    assert sequences(batch) == list(range(1, 11))
    reader.acknowledge(batch[-1].position)
    assert sequences(reader.read(20, 1 << 30)) == list(range(11, 31))
    reader.rewind()  # the output failed: re-send everything after 10
    assert sequences(read_available(reader)) == list(range(11, 51))
    reader.close()


# --- crashes and corruption ------------------------------------------------------------------------------


def _truncate_in_header(path: Path, last_record_start: int) -> None:
    os.truncate(path, last_record_start + 7)


def _truncate_in_payload(path: Path, last_record_start: int) -> None:
    os.truncate(path, path.stat().st_size - 5)


def _flip_a_byte(path: Path, last_record_start: int) -> None:
    data = bytearray(path.read_bytes())
    data[last_record_start + RECORD_OVERHEAD + 3] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate_in_header, _truncate_in_payload, _flip_a_byte])
@pytest.mark.parametrize("segment_bytes", [1 << 20, 3000], ids=["one-segment", "many-segments"])
def test_torn_tail_is_kept_until_the_writer_moves_on_then_set_aside_and_every_good_record_is_read_once(
    directory: Path,
    tmp_path: Path,
    spool_log: pytest.LogCaptureFixture,
    damage: Callable[[Path, int], None],
    segment_bytes: int,
) -> None:
    with SpoolWriter(directory, segment_bytes=segment_bytes) as writer:
        append_range(writer, 1, 10)
    newest = directory / segment_files(directory)[-1]
    last_record_start = newest.stat().st_size - RECORD_OVERHEAD - len(payload_for(10))
    damage(newest, last_record_start)
    damaged = newest.read_bytes()
    corrupt = tmp_path / "corrupt"

    reader = SpoolReader(directory, corrupt_dir=corrupt)  # running while the writer is down: waits at the bad record
    assert sequences(read_available(reader)) == list(range(1, 10))
    assert spool_messages(spool_log, logging.WARNING) == []  # the newest segment: maybe a write in progress

    with SpoolWriter(directory, segment_bytes=segment_bytes) as reopened:
        assert reopened.last_sequence == 9
        reopened.append([(10, b"re-sent 10"), (11, payload_for(11))])
    assert segment_name(10) in segment_files(directory)  # a new segment: the damaged one is never appended to

    records = read_available(reader)
    assert sequences(records) == [10, 11] and records[0].payload == b"re-sent 10"
    warnings = spool_messages(spool_log, logging.WARNING)
    assert len(warnings) == 1
    if last_record_start == 0:  # the torn record was alone in its segment: the writer moved the file aside
        assert str(newest) in warnings[0] and "not part of the spool" in warnings[0]
        assert (directory / f"{newest.name}.stray").read_bytes() == damaged
    else:  # the reader copied the torn tail aside once a newer segment closed the damaged one
        assert newest.read_bytes() == damaged  # never modified
        assert str(newest) in warnings[0]
        assert f"offset {last_record_start}" in warnings[0]
        assert f"{len(damaged) - last_record_start} bytes" in warnings[0]
        assert (corrupt / f"process-{newest.name}-{last_record_start}.bad").read_bytes() == damaged[last_record_start:]
        assert stat.S_IMODE(corrupt.stat().st_mode) == 0o700
    reader.close()
    with SpoolReader(directory) as from_scratch:
        assert sequences(read_available(from_scratch)) == list(range(1, 12))


def test_reader_stops_before_a_record_being_written_and_resumes_when_it_completes(directory: Path) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 3)
    segment = directory / segment_name(1)
    record = encode(4, payload_for(4))
    complete_size = segment.stat().st_size + len(record)
    reader = SpoolReader(directory)
    assert sequences(reader.read(100, 1 << 20)) == [1, 2, 3]
    cuts = [0, 3, HEADER_SIZE, HEADER_SIZE + 7, len(record)]  # the writer's bytes arriving a piece at a time
    for start, end in zip(cuts, cuts[1:]):
        with open(segment, "ab") as file:
            file.write(record[start:end])
        assert sequences(reader.read(100, 1 << 20)) == ([4] if end == len(record) else [])
    assert segment.stat().st_size == complete_size  # the reader never cuts anything
    reader.close()


def test_corrupt_record_in_a_closed_segment_is_set_aside_and_reading_resumes_after_it(
    directory: Path, tmp_path: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    record_bytes = RECORD_OVERHEAD + 100
    with SpoolWriter(directory, segment_bytes=4 * record_bytes) as writer:
        writer.append([(sequence, b"p" * 100) for sequence in range(1, 10)])  # segments 1, 5, 9
    closed = directory / segment_name(5)
    data = bytearray(closed.read_bytes())
    data[record_bytes + RECORD_OVERHEAD + 50] ^= 0xFF  # the payload of sequence 6
    closed.write_bytes(bytes(data))

    with SpoolReader(directory, corrupt_dir=tmp_path / "corrupt") as reader:
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5, 7, 8, 9]
        reader.rewind()  # read again: the same bad stretch is skipped without another warning
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5, 7, 8, 9]
    warnings = spool_messages(spool_log, logging.WARNING)
    assert len(warnings) == 1
    assert str(closed) in warnings[0] and f"offset {record_bytes}" in warnings[0] and f"{record_bytes} bytes" in warnings[0]
    copy = tmp_path / "corrupt" / f"process-{segment_name(5)}-{record_bytes}.bad"
    assert copy.read_bytes() == bytes(data[record_bytes : 2 * record_bytes])


def test_record_with_a_valid_crc_but_no_greater_sequence_is_set_aside_and_a_stray_file_is_moved_out(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    directory.mkdir(parents=True)
    segment = directory / segment_name(100)
    content = encode(100, b"first") + encode(101, b"second") + encode(101, b"repeated") + encode(102, b"x")
    segment.write_bytes(content)
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [100, 101, 102]
    assert len(spool_messages(spool_log, logging.WARNING)) == 1  # the repeated record
    with SpoolWriter(directory) as writer:
        assert writer.last_sequence == 102
    assert segment.read_bytes() == content  # the writer never cuts a segment
    (directory / segment_name(200)).write_bytes(encode(150, b"below its segment's name"))
    with SpoolWriter(directory) as writer:
        assert writer.last_sequence == 102  # the stray does not make the sequence jump
        writer.append([(103, b"next")])
    assert segment_files(directory) == [segment_name(100), segment_name(103)]
    assert (directory / f"{segment_name(200)}.stray").exists()
    assert len(spool_messages(spool_log, logging.WARNING)) == 2


def test_cursor_beyond_the_data_lost_in_a_crash_is_refused_and_the_stored_records_are_resent(
    directory: Path, spool_log: pytest.LogCaptureFixture
) -> None:
    # The reader read and acknowledged records the OS had not yet written to disk when the machine crashed.
    with SpoolWriter(directory, fsync=False) as writer:
        append_range(writer, 1, 10)
    reader = SpoolReader(directory)
    reader.acknowledge(read_available(reader)[-1].position)
    reader.close()
    segment = directory / segment_name(1)
    os.truncate(segment, sum(RECORD_OVERHEAD + len(payload_for(sequence)) for sequence in range(1, 8)))
    cursor = (directory / ACK_FILE).read_text()

    with SpoolReader(directory) as before_the_writer:  # the cursor points past the last good record: refused
        assert sequences(read_available(before_the_writer)) == list(range(1, 8))
    assert any("refused" in message for message in spool_messages(spool_log, logging.WARNING))
    (directory / ACK_FILE).write_text(cursor)
    with SpoolWriter(directory) as writer:
        assert writer.last_sequence == 7  # what is stored, not what the refused cursor claims
        append_range(writer, 8, 30)
    with SpoolReader(directory) as restarted:  # the cursor's sequence 10 lies beyond segment 8's first: refused
        assert sequences(read_available(restarted)) == list(range(1, 31))


def test_unreadable_cursor_resends_from_the_oldest_record(directory: Path, spool_log: pytest.LogCaptureFixture) -> None:
    with SpoolWriter(directory) as writer:
        append_range(writer, 1, 5)
    (directory / ACK_FILE).write_text('{"segment": 12')
    with SpoolReader(directory) as reader:
        assert sequences(read_available(reader)) == [1, 2, 3, 4, 5]
    assert any(ACK_FILE in message for message in spool_messages(spool_log, logging.WARNING))


# --- sizes and permissions ---------------------------------------------------------------------------------


def test_spool_size_counts_the_segment_files_of_every_dataset(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    assert spool_size(root) == 0
    with SpoolWriter(root / "process", segment_bytes=4096) as process, SpoolWriter(root / "socket") as socket:
        process_bytes = process.append([(sequence, b"x" * 1000) for sequence in range(1, 20)])
        socket_bytes = socket.append([(1, b"y" * 123)])
    reader = SpoolReader(root / "process")
    reader.acknowledge(reader.read(1, 1 << 20)[0].position)  # writes an ack file, which is not counted
    reader.close()
    assert len(segment_files(root / "process")) > 1
    assert spool_size(root) == process_bytes + socket_bytes


def test_spool_directory_and_files_are_private_whatever_the_umask(directory: Path) -> None:
    previous = os.umask(0)
    try:
        with SpoolWriter(directory, segment_bytes=100) as writer:
            writer.append([(1, b"x" * 90), (2, b"y" * 90)])
        reader = SpoolReader(directory)
        reader.acknowledge(reader.read(1, 1 << 20)[0].position)
        reader.close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700  # created by the writer too
    for name in os.listdir(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


# --- a writer and a reader in different processes ---------------------------------------------------------


def write_in_child(directory: str, first: int, last: int, segment_bytes: int, seed: int) -> None:
    """Child process: append sequences first..last in random batches (last == 0: forever, until killed)."""
    chooser = random.Random(seed)
    with SpoolWriter(Path(directory), segment_bytes=segment_bytes, fsync=False) as writer:
        sequence = first
        while last == 0 or sequence <= last:
            batch_end = sequence + chooser.randint(1, 400) - 1
            if last:
                batch_end = min(batch_end, last)
            append_range(writer, sequence, batch_end)
            sequence = batch_end + 1


def start_writer_process(directory: Path, first: int, last: int, segment_bytes: int) -> multiprocessing.process.BaseProcess:
    child = multiprocessing.get_context("spawn").Process(
        target=write_in_child, args=(str(directory), first, last, segment_bytes, 7), daemon=True
    )
    child.start()
    return child


def stop_process(child: multiprocessing.process.BaseProcess) -> None:
    if child.is_alive():
        child.kill()
    child.join(10)


def test_writer_process_and_reader_process_exchange_every_sequence_once_in_order(directory: Path) -> None:
    total = 20_000
    reader = SpoolReader(directory)  # before the writer has created anything
    child = start_writer_process(directory, 1, total, segment_bytes=256 * 1024)
    chooser = random.Random(3)
    expected = 1
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while expected <= total:
            assert time.monotonic() < deadline, f"reader stuck after sequence {expected - 1}"
            batch = reader.read(chooser.randint(1, 1000), chooser.choice([1, 4096, 1 << 20]))
            if not batch:
                assert child.is_alive() or child.exitcode == 0, f"writer died with {child.exitcode}"
                time.sleep(0.001)  # polling interval, bounded by the deadline above
                continue
            for record in batch:
                assert record.sequence == expected
                assert record.payload == payload_for(expected)
                expected += 1
            reader.acknowledge(batch[-1].position)
        child.join(DEADLINE_SECONDS)
        assert child.exitcode == 0
    finally:
        stop_process(child)
    assert reader.read(1000, 1 << 20) == []
    assert not reader.has_pending()
    assert len(segment_files(directory)) == 1  # every closed segment was acknowledged and deleted
    assert spool_size(directory.parent) == (directory / segment_files(directory)[0]).stat().st_size
    reader.close()


def test_writer_killed_mid_stream_reopens_where_it_stopped(directory: Path) -> None:
    reader = SpoolReader(directory)
    child = start_writer_process(directory, 1, 0, segment_bytes=128 * 1024)
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while len(seen) < 5000:
            assert time.monotonic() < deadline and child.is_alive()
            seen.extend(sequences(reader.read(500, 1 << 20)))
        child.kill()
        child.join(DEADLINE_SECONDS)
    finally:
        stop_process(child)
    with SpoolWriter(directory, segment_bytes=128 * 1024) as writer:
        last = writer.last_sequence
        append_range(writer, last + 1, last + 10)
    seen.extend(sequences(read_available(reader)))
    assert seen == list(range(1, last + 11))
    reader.close()


# --- garbage never raises ----------------------------------------------------------------------------------


def _read_everything(reader: SpoolReader) -> list[SpooledRecord]:
    return read_available(reader, max_records=50, max_bytes=4096)


cursors = st.one_of(
    st.none(),
    st.binary(max_size=80),
    st.builds(
        lambda segment, offset, sequence: json.dumps({"segment": segment, "offset": offset, "sequence": sequence}).encode(),
        st.sampled_from([segment_name(1), segment_name(100), segment_name(10**9), "ack", 5]),
        st.integers(-5, 3000),
        st.integers(0, 2**40),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first_sequence=st.integers(0, 10**6),
    good_payloads=st.lists(st.binary(max_size=40), max_size=4),
    garbage=st.binary(max_size=300),
    garbage_in_closed_segment=st.booleans(),
    cursor=cursors,
)
def test_garbage_segment_file_only_ever_leads_to_a_clean_recovery(
    first_sequence: int, good_payloads: list[bytes], garbage: bytes, garbage_in_closed_segment: bool, cursor: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary) / "spool" / "fuzz"
        directory.mkdir(parents=True)
        good = [(first_sequence + index, payload) for index, payload in enumerate(good_payloads)]
        (directory / segment_name(first_sequence)).write_bytes(b"".join(encode(*record) for record in good) + garbage)
        newest_good: list[tuple[int, bytes]] = []
        if garbage_in_closed_segment:
            newest_good = [(first_sequence + 1000 + index, b"after the garbage %d" % index) for index in range(3)]
            (directory / segment_name(newest_good[0][0])).write_bytes(b"".join(encode(*record) for record in newest_good))
        if cursor is not None:
            (directory / ACK_FILE).write_bytes(cursor)

        reader = SpoolReader(directory)
        before_repair = _read_everything(reader)
        writer = SpoolWriter(directory)
        last = writer.last_sequence
        assert last >= max([sequence for sequence, _ in good + newest_good], default=0)
        writer.append([(last + 1, b"appended")])
        writer.close()
        after_repair = _read_everything(reader)
        reader.close()

        delivered = before_repair + after_repair
        assert all(a.sequence < b.sequence for a, b in zip(delivered, delivered[1:]))
        assert (delivered[-1].sequence, delivered[-1].payload) == (last + 1, b"appended")
        if cursor is None:  # nothing skipped as acknowledged: every good record arrives, in order
            pairs = [(record.sequence, record.payload) for record in delivered]
            assert pairs[: len(good) + len(newest_good)] == good + newest_good
        with SpoolReader(directory) as restarted:
            again = _read_everything(restarted)
        assert (again[-1].sequence, again[-1].payload) == (last + 1, b"appended")
