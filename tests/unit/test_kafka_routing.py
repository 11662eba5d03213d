"""The Kafka output's per-event topic and key: partial parsing and compiled format strings match json.loads + regex."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.runtime.collector import encode_document
from actors.outputs.kafka import FormatString, HashPartitioner, KafkaOutput, TopLevelMembers, lookup
from kafka.partitioner.default import murmur2

NAMES = ("@timestamp", "agent", "host", "event", "process", "message", "n")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["id", "name", "host", "dataset", '"', "\\", ",", "é"]), inner, max_size=3)),
    max_leaves=8)
documents = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), values, max_size=7)


def expected(payload: bytes, names: frozenset[str]) -> dict[str, Any]:
    return {name: value for name, value in json.loads(payload).items() if name in names}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents, min_size=1, max_size=6), st.sets(st.sampled_from(NAMES), min_size=1, max_size=3))
def test_top_level_members_equal_json_loads_for_encoded_events(batch: list[dict[str, Any]], names: set[str]) -> None:
    reader = TopLevelMembers(frozenset(names))
    for document in batch + batch:  # repeated: the remembered common text is reused the second time
        payload = encode_document(document)
        assert reader(payload) == expected(payload, reader.names)


def test_remembered_common_fields_are_reused_only_when_the_text_repeats_exactly() -> None:
    reader = TopLevelMembers(frozenset({"host"}))
    common = {"agent": {"id": "a"}, "ecs": {"version": "9"}, "n": 5}
    payloads = [encode_document({"@timestamp": "t1", **common, "host": {"id": "h1"}, "x": 1}),
                encode_document({"@timestamp": "t2", **common, "host": {"id": "h1"}, "x": 2}),
                encode_document({"@timestamp": "t3", **common, "host": {"id": "h2"}, "x": 2}),
                encode_document({"@timestamp": "t4", **common, "n": 55, "host": {"id": "h3"}}),
                encode_document({"@timestamp": "t5", "agent": {"id": "a"}, "ecs": {"version": "9"}, "n": 55,
                                 "host": {"id": "h4"}})]
    assert [reader(payload)["host"]["id"] for payload in payloads] == ["h1", "h1", "h2", "h3", "h4"]


@pytest.mark.parametrize("payload", [b' {"host":{"id":"x"}}', b'{ "host" : {"id":1} , "x":2}',
                                     b'{"x":"\\"host\\":{\\"id\\":\\"no\\"}","host":{"id":"yes"}}',
                                     b'{"a":{"host":{"id":"nested"}},"host":{"id":"top"}}',
                                     b'{"host":{"id":"a","id":"b"}}', b'{"host":null}', b'{}', b'[1]'])
def test_top_level_members_follow_json_loads_on_hand_written_json(payload: bytes) -> None:
    document = json.loads(payload)
    want = {"host": document["host"]} if isinstance(document, dict) and "host" in document else {}
    assert TopLevelMembers(frozenset({"host"}))(payload) == want


@pytest.mark.parametrize("payload", [b'{"host":{"id":"x"}', b'{"host":', b'{"a":tru,"host":{}}', b"{", b""])
def test_invalid_json_before_the_members_needed_raises_as_json_loads_does(payload: bytes) -> None:
    with pytest.raises(ValueError):
        TopLevelMembers(frozenset({"host"}))(payload)


_REFERENCE = re.compile(r"%\{\[([^\]]+)\](?::([^}]*))?\}")


def regex_render(template: str, document: dict[str, Any]) -> str:
    """The original regex-substitution renderer, kept as the reference."""
    def replace(match: re.Match[str]) -> str:
        value = lookup(document, match.group(1))
        if value is None:
            if match.group(2) is None:
                raise KeyError(match.group(1))
            return match.group(2)
        return str(value)
    return _REFERENCE.sub(replace, template)


@pytest.mark.parametrize("template", ["hostaudit", "%{[host.id]}", "p-%{[event.dataset]}-%{[x.y]:none}-s",
                                      "%{[event.sequence]}", "%{[event]}", "%{[missing]}", "%{[host.id]:}", "%{[a"])
@pytest.mark.parametrize("document", [{"host": {"id": "h"}, "event": {"dataset": "process", "sequence": 7}},
                                      {"host": {"id": None}, "event": []}, {}])
def test_format_string_renders_as_the_regex_renderer(template: str, document: dict[str, Any]) -> None:
    def outcome(render: Any) -> Any:
        try:
            return render(template, document)
        except KeyError as missing:
            return ("KeyError", str(missing))
    assert outcome(lambda t, d: FormatString(t).render(d)) == outcome(regex_render)


def test_hash_partitioner_remembers_hashes_without_changing_them() -> None:
    partitioner = HashPartitioner()
    for key in (b"4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b", b"a", b"4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"):
        assert partitioner(key, list(range(7)), []) == (murmur2(key) & 0x7FFFFFFF) % 7


def test_output_record_reads_topic_and_key_from_the_event_and_names_a_missing_field() -> None:
    output = KafkaOutput({"hosts": ["127.0.0.1:1"], "topic": "t-%{[event.dataset]}", "key": "%{[host.id]}"})
    event = {"@timestamp": "t", "host": {"id": "h1"}, "event": {"dataset": "process", "id": "e1"}}
    assert output._record(encode_document(event)) == ("t-process", b"h1", encode_document(event))
    with pytest.raises(KeyError, match=r"host.id"):
        output._record(encode_document({"event": {"dataset": "process", "id": "e1"}}))
