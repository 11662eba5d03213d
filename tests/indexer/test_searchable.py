"""End to end: the real agent's events from every dataset, through real Kafka and `hostaudit index`, searchable
in real OpenSearch: counts by event.dataset, a term query on process.pid, a CIDR query on source.ip, a date
range on @timestamp; each answer checked against the events read back from Kafka. The index template is the
one `hostaudit export template --flavor opensearch` prints: no event of any dataset may be refused by it."""

from __future__ import annotations

import collections
import ipaddress
import socket

import pytest

from tests.indexer.support import count, indexer_overrides, refresh, search, unique_name
from tests.kafka_support import consume_all, wait_for_topic_events

pytestmark = pytest.mark.kafka

DATASETS = ("host", "process", "socket", "user")


def test_the_agents_events_from_every_dataset_are_searchable(agent_factory, indexer_factory, test_index,
                                                              kafka_bootstrap: str, templated_search_url: str) -> None:
    topic, group = unique_name("agent"), unique_name("group")
    index, pattern = test_index
    listener = socket.create_server(("127.0.0.1", 0))  # an established loopback connection for source.ip
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        agent = agent_factory(overrides=(
            "output.file.enabled=false", "output.kafka.enabled=true", f"output.kafka.hosts=[{kafka_bootstrap}]",
            f"output.kafka.topic={topic}", "output.kafka.timeout=5s",
            f"hostaudit.modules=[{{module: system, datasets: [{', '.join(DATASETS)}], "
            "socket.include_localhost: true}]"))
        wait_for_topic_events(kafka_bootstrap, topic,
                              lambda m: {d["event"]["dataset"] for _, d in m} >= set(DATASETS), 60,
                              "a state report of every dataset in Kafka")
        assert agent.terminate(15) == 0
    finally:
        for end in (client, accepted, listener):
            end.close()
    events = [document for _, document in consume_all(kafka_bootstrap, topic)]  # each checked against ECS
    ids = {event["event"]["id"] for event in events}
    unique = {event["event"]["id"]: event for event in events}.values()  # the agent is at-least-once

    indexer = indexer_factory(*indexer_overrides(kafka_bootstrap, [topic], templated_search_url, group,
                                                 f"output.elasticsearch.index={index}"))
    indexer.wait_for_stats(lambda s: s["totals"]["indexed"] + s["totals"]["duplicates"] >= len(events) and
                           s["totals"]["lag"] == 0, 60, f"the {len(events)} events indexed")
    assert indexer.stats()["totals"]["dead_lettered"] == 0, indexer.log()[-3000:]
    refresh(templated_search_url, pattern)
    assert count(templated_search_url, pattern) == len(ids), "one document per event.id"

    # count by event.dataset
    answer = search(templated_search_url, pattern, {"size": 0, "aggs": {"datasets": {"terms": {
        "field": "event.dataset"}}}})
    by_dataset = {bucket["key"]: bucket["doc_count"] for bucket in answer["aggregations"]["datasets"]["buckets"]}
    expected = collections.Counter(event["event"]["dataset"] for event in unique)
    assert by_dataset == dict(expected) and set(by_dataset) == set(DATASETS)

    # a term query on process.pid (long)
    pid = next(event["process"]["pid"] for event in events if event["event"]["dataset"] == "process")
    with_pid = {event["event"]["id"] for event in events if event.get("process", {}).get("pid") == pid}
    assert count(templated_search_url, pattern, {"term": {"process.pid": pid}}) == len(with_pid) >= 1

    # a CIDR query on source.ip (ip)
    loopback = ipaddress.ip_network("127.0.0.0/8")
    from_loopback = {event["event"]["id"] for event in events
                     if "ip" in event.get("source", {}) and ipaddress.ip_address(event["source"]["ip"]) in loopback}
    assert from_loopback, "the agent saw the test's loopback connection"
    assert count(templated_search_url, pattern, {"term": {"source.ip": "127.0.0.0/8"}}) == len(from_loopback)

    # a date range on @timestamp (date)
    stamps = sorted(event["@timestamp"] for event in unique)
    middle = stamps[len(stamps) // 2]
    assert count(templated_search_url, pattern, {"range": {"@timestamp": {"gte": stamps[0], "lte": stamps[-1]}}}) \
        == len(ids)
    assert count(templated_search_url, pattern, {"range": {"@timestamp": {"lt": middle}}}) == \
        sum(1 for stamp in stamps if stamp < middle)
    assert count(templated_search_url, pattern, {"range": {"@timestamp": {"lt": stamps[0]}}}) == 0
