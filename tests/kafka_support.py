"""Real Kafka brokers for tests (ops/kafka/broker.py) and a consumer that reads a topic to the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition

from actors.ecs import assert_ecs
from tests.sample_support import EVENT_FIELDS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ops" / "kafka"))
from broker import KafkaBroker, SslMaterial, make_ssl_material  # noqa: E402

__all__ = ["KafkaBroker", "SslMaterial", "make_ssl_material", "consume_all", "wait_for_topic_events"]


def check_event(document: dict[str, Any]) -> None:
    """The default check of a consumed document: an ECS event of hostaudit (its own fields declared too)."""
    assert_ecs(document, EVENT_FIELDS)


def consume_all(bootstrap: str, topic: str, timeout: float = 10.0,
                check: Callable[[dict[str, Any]], None] | None = check_event
                ) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every message of `topic` from the beginning to its current end, as (key, document), each document
    checked by `check` (by default against the event field table)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=int(timeout * 1000), request_timeout_ms=30_000)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return []
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends = consumer.end_offsets(assigned)
        messages: list[tuple[bytes | None, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in assigned) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    document = json.loads(record.value)
                    if check is not None:
                        check(document)
                    messages.append((record.key, document))
        return messages
    finally:
        consumer.close()


def wait_for_topic_events(bootstrap: str, topic: str, predicate, timeout: float, what: str
                          ) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Consume `topic` repeatedly until `predicate(messages)` holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    messages: list[tuple[bytes | None, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        messages = consume_all(bootstrap, topic, timeout=5)
        if predicate(messages):
            return messages
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; have {len(messages)} messages")
