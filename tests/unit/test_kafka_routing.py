"""The Kafka output's per-event topic and key: rendered from the routing values recorded at spool time exactly as
from the event itself, without parsing it; events spooled without them are parsed (the upgrade path)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.outputs import OutgoingEvent
from actors.outputs.kafka import (FormatString, HashedKey, HashedKeySerializer, HashPartitioner, KafkaOutput,
                                  NoHashField, lookup, producer_config)
from actors.outputs.routing import Unrecorded, routing_fields, routing_values
from actors.event import encode_document
from actors.runtime.spool import decode_routing, encode_routing
from kafka.partitioner.default import murmur2

NAMES = ("@timestamp", "agent", "host", "event", "process", "message", "n")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(),
                    st.text(max_size=12), st.sampled_from(["\ud800", "a\udfffb", "é\x00\n\"\\"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.sampled_from(["id", "name", "host", "dataset", '"', "\\", ",", "é"]), inner, max_size=3)),
    max_leaves=8)
documents = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), values, max_size=7)
FIELDS = ("host", "host.id", "host.name", "event", "event.dataset", "event.id", "n", "message", "process.host.id",
          "missing", "a.b")
templates = st.lists(st.tuples(st.text(alphabet="ab-_.", max_size=3), st.sampled_from(FIELDS),
                               st.one_of(st.none(), st.text(alphabet="xyz", max_size=3))), min_size=0, max_size=3).map(
    lambda parts: "".join(f"{literal}%{{[{field}]{'' if default is None else ':' + default}}}"
                          for literal, field, default in parts) + "-t")


def outcome(render: Any) -> Any:
    try:
        return render()
    except KeyError as missing:
        return ("KeyError", str(missing))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(documents, templates)
def test_recorded_routing_values_render_as_the_event_parsed_from_the_spool_does(document: dict[str, Any],
                                                                                template: str) -> None:
    format_string = FormatString(template)
    stored = decode_routing(encode_routing(routing_values(document, format_string.fields))[4:])  # as spooled
    parsed = json.loads(encode_document(document))  # what the output parsed before, and parses on the rare path
    assert outcome(lambda: format_string.render_values(stored)) == outcome(lambda: format_string.render(parsed))


def test_render_values_names_a_field_that_was_not_recorded() -> None:
    format_string = FormatString("t-%{[event.dataset]}-%{[host.id]:none}")
    assert format_string.render_values({"event.dataset": "process", "host.id": None}) == "t-process-none"
    with pytest.raises(KeyError, match="event.dataset"):
        format_string.render_values({"event.dataset": None, "host.id": "h"})
    with pytest.raises(Unrecorded, match="host.id"):
        format_string.render_values({"event.dataset": "process"})
    assert not issubclass(Unrecorded, KeyError), "a field not recorded is not a field the event lacks"


def test_routing_fields_are_those_of_the_topic_key_and_hash_partitioner_of_kafka_only() -> None:
    options = {"topic": "a-%{[event.dataset]}-%{[x.y]:d}", "key": "%{[host.id]}",
               "partition": {"hash": {"hash": ["process.name", "host.id"], "random": True}}}
    assert routing_fields("kafka", options) == {"event.dataset", "x.y", "host.id", "process.name"}
    assert routing_fields("kafka", {"topic": "fixed", "key": ""}) == frozenset()
    assert routing_fields("kafka", {"topic": "t", "partition": {"round_robin": {"group_events": 1}}}) == frozenset()
    assert routing_fields("file", options) == routing_fields("console", options) == frozenset()


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


def kafka_output(**options: Any) -> KafkaOutput:
    return KafkaOutput({"hosts": ["127.0.0.1:1"], "topic": "t-%{[event.dataset]}", "key": "%{[host.id]}", **options})


def test_the_topic_and_key_come_from_the_recorded_values_without_parsing_the_event() -> None:
    output = kafka_output()
    not_json = b"\x00 not JSON: parsing it would fail"
    routing = {"event.dataset": "process", "host.id": "h1"}
    assert output._record(OutgoingEvent(not_json, routing)) == ("t-process", b"h1", not_json)
    assert output.reparsed == 0
    with pytest.raises(KeyError, match=r"host.id"):
        output._record(OutgoingEvent(not_json, {"event.dataset": "process", "host.id": None}))


def test_an_event_spooled_without_routing_values_is_routed_from_its_payload() -> None:
    output = kafka_output()
    event = {"@timestamp": "t", "host": {"id": "h1"}, "event": {"dataset": "process", "id": "e1"}}
    payload = encode_document(event)
    assert output._record(OutgoingEvent(payload, None)) == ("t-process", b"h1", payload)  # a HAR1 record
    # spooled while the topic was fixed (only the key's field recorded): the topic's field is not there
    assert output._record(OutgoingEvent(payload, {"host.id": "h1"})) == ("t-process", b"h1", payload)
    assert output.reparsed == 2
    with pytest.raises(KeyError, match=r"host.id"):
        output._record(OutgoingEvent(encode_document({"event": {"dataset": "process", "id": "e1"}})))
    with pytest.raises(ValueError):
        output._record(OutgoingEvent(b"[1, 2]"))
    with pytest.raises(ValueError):
        output._record(OutgoingEvent(b"{not json"))


class Cluster:
    """What the partitioner asks of kafka-python's cluster metadata: a topic of seven partitions."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3, 4, 5, 6}


def hash_output(random: bool = True) -> KafkaOutput:
    return kafka_output(partition={"hash": {"hash": ["event.dataset", "process.name"], "random": random,
                                            "reachable_only": False}})


def test_partition_hash_fields_are_hashed_instead_of_the_key() -> None:
    output = hash_output()
    routing = {"event.dataset": "process", "host.id": "h1", "process.name": "sshd"}
    topic, key, _ = output._record(OutgoingEvent(b"not parsed", routing))
    assert (topic, key) == ("t-process", HashedKey(b"h1", b"process\0sshd"))
    assert isinstance(producer_config(output.options)["key_serializer"], HashedKeySerializer)
    assert HashedKeySerializer().serialize("t", [], key) == b"h1", "the record key is still host.id"
    chosen = HashPartitioner().partition(topic, key, b"h1", None, None, Cluster())
    assert chosen == (murmur2(b"process\0sshd") & 0x7FFFFFFF) % 7 != (murmur2(b"h1") & 0x7FFFFFFF) % 7


def test_a_missing_hash_field_means_a_random_partition_or_with_random_off_a_refusal() -> None:
    routing = {"event.dataset": "host", "host.id": "h1", "process.name": None}
    assert hash_output()._record(OutgoingEvent(b"-", routing))[1] == HashedKey(b"h1", None)
    with pytest.raises(NoHashField, match="process.name"):
        hash_output(random=False)._record(OutgoingEvent(b"-", routing))
    partitioner = HashPartitioner()
    chosen = {partitioner.partition("t", HashedKey(b"h1", None), b"h1", None, None, Cluster()) for _ in range(200)}
    assert len(chosen) > 1, "random, not the key's partition"


def test_hash_fields_not_recorded_are_read_from_the_payload() -> None:
    output = hash_output()
    payload = encode_document({"event": {"dataset": "process"}, "host": {"id": "h1"}, "process": {"name": "sshd"}})
    assert output._record(OutgoingEvent(payload, {"event.dataset": "process", "host.id": "h1"}))[:2] == (
        "t-process", HashedKey(b"h1", b"process\0sshd"))
    assert output.reparsed == 1
    assert "key_serializer" not in producer_config(kafka_output().options), "no hash fields: keys are plain bytes"
