"""Spool record versions: HAR2 records carry routing values; HAR1 segments left by the previous version are read."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from actors.outputs.kafka import KafkaOutput
from actors.runtime.spool import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SpoolReader,
    SpoolWriter,
    decode_routing,
    encode_record,
    encode_routing,
    segment_name,
)
from tests.unit.test_spool import encode_v1, read_available, segment_files, sequences

# Segment 1 of a spool written by the previous version's SpoolWriter (actors/runtime/spool.py at a07ac6a):
#   writer.append([(1, <the event below>), (2, b'{"message":"HAR1 inside"}')])
OLD_EVENT = b'{"@timestamp":"2026-01-01T00:00:00.000Z","host":{"id":"h-old"},"event":{"dataset":"host","sequence":1}}'
OLD_SEGMENT = bytes.fromhex(
    "484152316700000021c2bf7b01000000000000007b224074696d657374616d70223a22323032362d30312d30315430303a30303a30"
    "302e3030305a222c22686f7374223a7b226964223a22682d6f6c64227d2c226576656e74223a7b2264617461736574223a22686f73"
    "74222c2273657175656e6365223a317d7d4841523119000000e981717302000000000000007b226d657373616765223a224841523120"
    "696e73696465227d")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "process"


def test_the_old_writers_bytes_are_what_the_tests_build_as_har1() -> None:
    assert OLD_SEGMENT == encode_v1(1, OLD_EVENT) + encode_v1(2, b'{"message":"HAR1 inside"}')


def test_an_upgraded_agent_delivers_what_the_previous_version_spooled_then_its_own_records(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / segment_name(1)).write_bytes(OLD_SEGMENT)
    with SpoolWriter(directory, fsync=False) as writer:
        assert writer.last_sequence == 2, "the upgraded writer continues after the old records"
        writer.append([(3, b"new", {"host.id": "h-new"})])
    assert segment_files(directory) == [segment_name(1), segment_name(3)], "the old segment is never appended to"
    assert (directory / segment_name(3)).read_bytes()[:4] == MAGIC
    with SpoolReader(directory) as reader:
        records = read_available(reader)
        assert [(r.sequence, r.payload, r.routing) for r in records[:2]] == [
            (1, OLD_EVENT, None), (2, b'{"message":"HAR1 inside"}', None)]
        assert records[2].sequence == 3 and records[2].payload == b"new" and dict(records[2].routing or {}) == {
            "host.id": "h-new"}
        reader.acknowledge(records[-1].position)
    assert segment_files(directory) == [segment_name(3)], "the old segment is reclaimed once acknowledged"


def test_the_kafka_output_routes_old_records_from_their_payload(tmp_path: Path) -> None:
    (tmp_path / "spool" / "host").mkdir(parents=True)
    (tmp_path / "spool" / "host" / segment_name(1)).write_bytes(OLD_SEGMENT[:HEADER_SIZE + len(OLD_EVENT)])
    with SpoolWriter(tmp_path / "spool" / "host", fsync=False) as writer:
        writer.append([(2, b'{"event":{"dataset":"host"},"host":{"id":"h-new"}}',
                        {"event.dataset": "host", "host.id": "h-new"})])
    output = KafkaOutput({"hosts": ["127.0.0.1:1"], "topic": "t-%{[event.dataset]}", "key": "%{[host.id]}"})
    with SpoolReader(tmp_path / "spool" / "host") as reader:
        records = reader.read(10, 1 << 20)
    assert [output._record(record)[:2] for record in records] == [("t-host", b"h-old"), ("t-host", b"h-new")]
    assert output.reparsed == 1, "only the old record was parsed"


def test_corruption_in_an_old_segment_loses_only_the_record_it_hits(directory: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hostaudit.spool")
    directory.mkdir(parents=True)
    records = [encode_v1(sequence, b"old %d" % sequence * 10) for sequence in range(1, 51)]
    data = bytearray(b"".join(records))
    hit = sum(map(len, records[:20])) + HEADER_SIZE + 5
    data[hit] ^= 0xFF  # the payload of sequence 21
    (directory / segment_name(1)).write_bytes(bytes(data))
    with SpoolWriter(directory, fsync=False) as writer:  # closes the old segment with a new one
        writer.append([(51, b"new")])
    with SpoolReader(directory, corrupt_dir=tmp_path / "corrupt") as reader:
        assert sequences(read_available(reader)) == [s for s in range(1, 52) if s != 21]
    assert sum("not good records" in r.getMessage() for r in caplog.records) == 1


def test_a_torn_old_tail_is_set_aside_once_the_upgraded_writer_starts_a_segment(directory: Path) -> None:
    directory.mkdir(parents=True)
    whole = encode_v1(1, b"one") + encode_v1(2, b"two")
    (directory / segment_name(1)).write_bytes(whole + encode_v1(3, b"three")[:-2])  # the old agent died mid-write
    with SpoolWriter(directory, fsync=False) as writer:
        assert writer.last_sequence == 2
        writer.append([(3, b"three again", {"k": "v"})])
    with SpoolReader(directory) as reader:
        records = read_available(reader)
    assert [(r.sequence, r.payload) for r in records] == [(1, b"one"), (2, b"two"), (3, b"three again")]


def har2(sequence: int, body: bytes) -> bytes:
    """A HAR2 record with a body as given (a valid CRC whatever the body holds)."""
    return HEADER.pack(MAGIC, len(body), crc32c(sequence.to_bytes(8, "little") + body), sequence) + body


def test_a_record_whose_routing_section_overruns_its_body_is_set_aside(directory: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hostaudit.spool")
    directory.mkdir(parents=True)
    bad = har2(2, (100).to_bytes(4, "little") + b"short")  # claims a 100-byte section in a 9-byte body
    (directory / segment_name(1)).write_bytes(encode_record(1, b"one") + bad + encode_record(3, b"three"))
    with SpoolWriter(directory, fsync=False) as writer:
        writer.append([(4, b"four")])
    with SpoolReader(directory, corrupt_dir=tmp_path / "corrupt") as reader:
        assert [(r.sequence, r.payload) for r in read_available(reader)] == [(1, b"one"), (3, b"three"), (4, b"four")]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"{len(bad)} bytes" in warnings[0]


def test_an_unreadable_routing_section_loses_nothing_the_event_is_routed_from_its_payload(
        directory: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hostaudit.spool")
    directory.mkdir(parents=True)
    entries = b"\x05\x00ab"  # a name said to be 5 bytes long, cut short
    bad = har2(2, len(entries).to_bytes(4, "little") + entries + b'{"event":{"dataset":"x"}}')
    (directory / segment_name(1)).write_bytes(encode_record(1, b"one", {"a": "1"}) + bad)
    with SpoolReader(directory) as reader:
        records = reader.read(10, 1 << 20)
    assert [(r.sequence, r.routing) for r in records] == [(1, {"a": "1"}), (2, None)]
    assert records[1].payload == b'{"event":{"dataset":"x"}}'
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(directory / segment_name(1)) in warning and "record 2" in warning and "routing section" in warning


def test_records_of_one_dataset_share_their_decoded_routing_values(directory: Path) -> None:
    with SpoolWriter(directory, fsync=False) as writer:
        writer.append([(n, b"x", {"host.id": "h", "event.dataset": "process"}) for n in range(1, 4)])
    with SpoolReader(directory) as reader:
        first, second, third = reader.read(10, 1 << 20)
    assert first.routing is second.routing is third.routing, "decoded once"
    with pytest.raises(TypeError):
        first.routing["host.id"] = "changed"  # type: ignore[index]  # shared, so read only


def test_routing_values_the_format_cannot_hold_are_refused_before_anything_is_written(directory: Path) -> None:
    with SpoolWriter(directory, fsync=False) as writer:
        with pytest.raises(TypeError):
            writer.append([(1, b"a"), (2, b"b", {"n": 5})])  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            writer.append([(1, b"a", {"x" * 70_000: "v"})])
        assert writer.last_sequence == 0 and not [n for n in os.listdir(directory) if n.endswith(".seg")]


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.none(), st.text(max_size=40)), max_size=6))
def test_routing_sections_round_trip(values: dict[str, str | None]) -> None:
    section = encode_routing(values)
    assert int.from_bytes(section[:4], "little") == len(section) - 4
    def stored(text: str) -> str:  # lone surrogates are stored as '?', as the encoded event stores them
        return text.encode("utf-8", "replace").decode()
    assert decode_routing(section[4:]) == {stored(k): None if v is None else stored(v) for k, v in values.items()}


@pytest.mark.parametrize("entries", [b"\x01", b"\x01\x00a", b"\x01\x00a\x05\x00\x00\x00abc", b"\x01\x00\xff\x00\x00\x00\x00"])
def test_malformed_routing_entries_are_a_value_error(entries: bytes) -> None:
    with pytest.raises(ValueError):
        decode_routing(entries)
