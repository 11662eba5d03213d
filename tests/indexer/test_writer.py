"""The bulk writer and what it is made of: records into documents, `_bulk` outcomes (created, 409 duplicate,
400 to the dead-letter topic, 429/5xx/unreachable retried, 413 and whole-request 400 split), the abandon on
stop, the dead-letter record, the credentials sent. Failures the real engine cannot be made to show are
scripted (tests/indexer/scripted_engine.py); the dead-letter topic is a real Kafka broker."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Iterator

import pytest

from actors.indexer.bulk import BulkClient
from actors.indexer.dead_letter import MAX_RECORD_BYTES, DeadLetters, dead_letter_record
from actors.indexer.documents import Document, DocumentReader, Refused, Source
from actors.indexer.settings import load_indexer_settings
from actors.indexer.writer import Batch, BulkWriter
from tests.indexer.scripted_engine import ScriptedEngine, accept_all
from tests.indexer.support import make_event, unique_name
from tests.kafka_support import consume_all

SOURCE = Source("hostaudit", 0, 7, b"host-1")


# --- records into documents ----------------------------------------------------------------------------------


def test_a_record_becomes_a_create_with_the_event_id_into_its_data_stream() -> None:
    event = make_event("host")
    document = DocumentReader("hostaudit-%{[event.dataset]}-default").read(SOURCE, json.dumps(event).encode())
    assert isinstance(document, Document)
    assert json.loads(document.action) == {"create": {"_index": "hostaudit-host-default", "_id": event["event"]["id"]}}
    assert document.body == json.dumps(event).encode(), "the record's bytes as they are"
    quoted = make_event("host", event={"id": 'a"b\\c'})
    action = DocumentReader("x").read(SOURCE, json.dumps(quoted).encode()).action
    assert json.loads(action)["create"]["_id"] == 'a"b\\c'


def test_pretty_printed_json_is_sent_on_one_line() -> None:
    event = make_event("user")
    document = DocumentReader("x").read(SOURCE, json.dumps(event, indent=2).encode())
    assert b"\n" not in document.body and json.loads(document.body) == event


@pytest.mark.parametrize(("value", "reason"), [
    (None, "empty message"),
    (b"", "empty message"),
    (b'{"event": {"id": "x"', "malformed JSON: Expecting"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
    (b"[1, 2]", "not a JSON object but a list"),
    (b'{"event": {"dataset": "host"}}', "no event.id"),
    (b'{"event": {"id": "", "dataset": "host"}}', "no event.id"),
    (b'{"event": {"id": 12, "dataset": "host"}}', "no event.id"),
    (b'{"event": "x"}', "no event.id"),
    (json.dumps({"event": {"id": "x" * 513, "dataset": "host"}}).encode(), "longer than 512 bytes"),
    (b'{"event": {"id": "x"}}', "no field event.dataset for output.elasticsearch.index"),
])
def test_what_cannot_be_indexed_is_refused_with_the_reason(value: bytes | None, reason: str) -> None:
    refused = DocumentReader("hostaudit-%{[event.dataset]}-default").read(SOURCE, value)
    assert isinstance(refused, Refused) and reason in refused.reason and refused.payload == value
    assert refused.is_json == (reason not in ("empty message", "malformed JSON", "malformed JSON: Expecting"))


def test_a_default_in_the_index_format_string_keeps_the_record() -> None:
    document = DocumentReader("hostaudit-%{[event.dataset]:unknown}-default").read(SOURCE, b'{"event": {"id": "x"}}')
    assert json.loads(document.action)["create"]["_index"] == "hostaudit-unknown-default"


def test_the_dead_letter_record_keeps_the_event_and_says_why() -> None:
    record = json.loads(dead_letter_record(Refused(SOURCE, b'{"event": {"id": "x"}}', "refused by the engine: no"),
                                           "2026-01-01T00:00:00.000Z"))
    assert record == {"reason": "refused by the engine: no", "failed_at": "2026-01-01T00:00:00.000Z",
                      "source": {"topic": "hostaudit", "partition": 0, "offset": 7}, "event": {"event": {"id": "x"}}}
    record = json.loads(dead_letter_record(Refused(SOURCE, b"\xffnot json", "malformed JSON: x", is_json=False), "t"))
    assert record["event"] == "\\xffnot json" and record["malformed"] is True
    huge = b'{"message": "' + b"x" * (2 * MAX_RECORD_BYTES) + b'"}'
    encoded = dead_letter_record(Refused(SOURCE, huge, "refused by the engine: too large"), "t")
    record = json.loads(encoded)
    assert len(encoded) < MAX_RECORD_BYTES and record["truncated"] is True and record["event"].startswith('{"message')


# --- the writer against a scripted engine ---------------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[list[ScriptedEngine]]:
    engines: list[ScriptedEngine] = []
    yield engines
    for each in engines:
        each.close()


def writer_for(urls: list[str], bootstrap: str = "127.0.0.1:1", dead_letter_topic: str = "dead",
               *extra: str) -> tuple[BulkWriter, threading.Event]:
    settings = load_indexer_settings(None, [
        f"input.kafka.hosts=[{bootstrap}]", f"output.elasticsearch.hosts=[{', '.join(urls)}]",
        "output.elasticsearch.backoff.init=20ms", "output.elasticsearch.backoff.max=100ms", "input.kafka.timeout=10s",
        f"input.kafka.dead_letter_topic={dead_letter_topic}", *extra], environ={})
    abandon = threading.Event()
    writer = BulkWriter(BulkClient(settings.engine), DeadLetters(settings.kafka.client, dead_letter_topic),
                        settings.engine.bulk_max_bytes, settings.engine.backoff_init, settings.engine.backoff_max,
                        abandon)
    return writer, abandon


def batch_of(count: int, **fields) -> Batch:
    reader = DocumentReader("hostaudit-%{[event.dataset]}-default")
    documents = [reader.read(Source("t", 0, offset), json.dumps(make_event("process", **fields)).encode())
                 for offset in range(count)]
    return Batch(1, documents, [], {"t-0": count})


def test_429_and_503_items_are_sent_again_until_taken(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(lambda docs: (200, [201, 429, 201, 503]), accept_all)
    engine.append(scripted)
    writer, _ = writer_for([scripted.url])
    batch = batch_of(4)
    outcome = writer.write(batch)
    assert (outcome.indexed, outcome.duplicates, outcome.rejected, outcome.abandoned) == (4, 0, 0, False)
    ids = [json.loads(document.action)["create"]["_id"] for document in batch.documents]
    assert scripted.ids(1) == [ids[1], ids[3]], "only the documents not taken are sent again"
    assert (writer.stats.retries, writer.stats.retried_documents, writer.stats.engine_up) == (1, 2, True)


def test_an_engine_answering_502_or_not_json_is_retried_and_reported_down_meanwhile(
        engine: list[ScriptedEngine], caplog: pytest.LogCaptureFixture) -> None:
    seen_down: list[bool] = []

    def bad_gateway(docs):
        return 502, b"<html>bad gateway</html>"

    def not_json(docs):
        seen_down.append(writer.stats.engine_up)
        return 200, b"<html>a proxy page</html>"

    scripted = ScriptedEngine(bad_gateway, not_json, accept_all)
    engine.append(scripted)
    writer, _ = writer_for([scripted.url])
    with caplog.at_level("INFO"):
        outcome = writer.write(batch_of(3))
    assert outcome.indexed == 3 and writer.stats.retries == 2 and seen_down == [False]
    assert writer.stats.engine_up and writer.stats.down_since == 0.0
    assert "HTTP 502" in caplog.text and "takes documents again" in caplog.text


def test_an_unreachable_host_is_skipped_for_the_next(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(accept_all)
    engine.append(scripted)
    writer, _ = writer_for(["http://127.0.0.1:1", scripted.url])
    assert writer.write(batch_of(2)).indexed == 2
    assert writer.stats.retries == 1 and "127.0.0.1:1" in writer.stats.last_error


def test_413_splits_the_request_until_it_fits(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(lambda docs: (413, {"error": "too large"}) if len(docs) > 2 else (200, [201] * len(docs)))
    engine.append(scripted)
    writer, _ = writer_for([scripted.url])
    assert writer.write(batch_of(8)).indexed == 8
    assert [len(request[0]) for request in scripted.requests] == [8, 4, 2, 2, 4, 2, 2]
    assert writer.stats.retries == 0, "a split is not a failure"


def test_requests_stay_below_bulk_max_bytes(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(accept_all)
    engine.append(scripted)
    writer, _ = writer_for([scripted.url], "127.0.0.1:1", "dead", "output.elasticsearch.bulk_max_bytes=4KiB")
    batch = batch_of(12, message="m" * 700)
    assert writer.write(batch).indexed == 12
    sizes = [int(headers["Content-Length"]) for _, headers in scripted.requests]
    assert len(sizes) > 2 and max(sizes) <= 4096


def test_abandon_stops_the_retries_at_once_and_nothing_counts_as_done(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(lambda docs: (503, {"error": {"type": "unavailable", "reason": "down"}}))
    engine.append(scripted)
    writer, abandon = writer_for([scripted.url], "127.0.0.1:1", "dead", "output.elasticsearch.backoff.max=1m",
                                 "output.elasticsearch.backoff.init=1m")
    threading.Timer(0.3, abandon.set).start()
    started = time.monotonic()
    outcome = writer.write(batch_of(2))
    assert outcome.abandoned and outcome.indexed == 0 and time.monotonic() - started < 5
    assert not writer.stats.engine_up and "HTTP 503: unavailable: down" in writer.stats.last_error


def test_credentials_go_to_the_engine_only_as_the_authorization_header(engine: list[ScriptedEngine]) -> None:
    scripted = ScriptedEngine(accept_all)
    engine.append(scripted)
    writer, _ = writer_for([scripted.url], "127.0.0.1:1", "dead", "output.elasticsearch.api_key=key-id:key-secret")
    writer.write(batch_of(1))
    writer, _ = writer_for([scripted.url], "127.0.0.1:1", "dead", "output.elasticsearch.username=elastic",
                           "output.elasticsearch.password=pa55")
    writer.write(batch_of(1))
    headers = [request[1] for request in scripted.requests]
    assert headers[0]["Authorization"] == "ApiKey " + base64.b64encode(b"key-id:key-secret").decode()
    assert headers[1]["Authorization"] == "Basic " + base64.b64encode(b"elastic:pa55").decode()
    assert headers[0]["Content-Type"] == "application/x-ndjson"


@pytest.mark.kafka
def test_refusals_go_to_the_dead_letter_topic_and_the_rest_is_indexed(engine: list[ScriptedEngine],
                                                                      kafka_bootstrap: str) -> None:
    batch = batch_of(6)
    poison = json.loads(batch.documents[4].action)["create"]["_id"]

    def refuse_the_poison_whole(docs):
        ids = [action["create"]["_id"] for action, _ in docs]
        return (400, {"error": {"type": "parse_exception", "reason": "bad body"}}) if poison in ids \
            else (200, [409 if ids_index == 0 else 201 for ids_index in range(len(ids))])

    scripted = ScriptedEngine(lambda docs: (200, [201, 400, 201, 201, 201, 201]), refuse_the_poison_whole)
    engine.append(scripted)
    topic = unique_name("dead")
    writer, _ = writer_for([scripted.url], kafka_bootstrap, topic)
    malformed = Refused(Source("t", 0, 6), b"{nope", "malformed JSON: x", is_json=False)
    batch.refused.append(malformed)
    first = writer.write(batch)  # item 1 refused by the engine; everything else created
    assert (first.indexed, first.rejected) == (5, 1)
    second = writer.write(batch_of(6))  # no poison in it: a 409 and five 201
    assert (second.indexed, second.duplicates) == (5, 1)
    batch = batch_of(6)
    poison = json.loads(batch.documents[4].action)["create"]["_id"]
    third = writer.write(batch)  # the whole request refused while the poison is in it: halves until found
    assert (third.indexed + third.duplicates, third.rejected) == (5, 1)
    letters = [document for _, document in consume_all(kafka_bootstrap, topic, check=None)]
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 3 and reasons[0].startswith("malformed JSON")
    assert "error_400: refused 400" in reasons[2] or "error_400: refused 400" in reasons[1]
    assert any("HTTP 400: parse_exception: bad body" in reason for reason in reasons)
    by_id = {letter["event"]["event"]["id"]: letter for letter in letters if isinstance(letter["event"], dict)}
    assert poison in by_id
    assert writer.stats.dead_lettered == 3 and writer.stats.malformed == 1 and writer.stats.rejected == 2
    writer.dead_letters.close()
