"""The indexer against real Kafka and real OpenSearch when things go wrong: refused documents, workers killed
with SIGKILL, a worker gone for good, the engine stopped under load; and SIGTERM, which drains and commits."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.indexer.support import (Load, committed_offsets, count, create_topic, end_offsets, indexer_overrides,
                                   install_template, make_event, produce, refresh, search, unique_name, wait_for)
from tests.kafka_support import consume_all

pytestmark = pytest.mark.kafka


def duplicated_ids(search_url: str, pattern: str) -> list[str]:
    """event.ids indexed more than once (there must be none)."""
    answer = search(search_url, pattern, {"size": 0, "aggs": {"ids": {"terms": {
        "field": "event.id", "min_doc_count": 2, "size": 10}}}})
    return [bucket["key"] for bucket in answer["aggregations"]["ids"]["buckets"]]


def test_refused_documents_go_to_the_dead_letter_topic_with_the_reason_and_sigterm_commits_the_rest(
        indexer_factory, test_index, kafka_bootstrap: str, templated_search_url: str) -> None:
    topic, group = unique_name("refused"), unique_name("group")
    index, pattern = test_index
    good = [make_event("process", process={"pid": 1000 + number}) for number in range(60)]
    wrong_type = make_event("process", process={"pid": "not-a-number"})
    no_id = make_event("process")
    del no_id["event"]["id"]
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [*good[:30], wrong_type, b'{"event": {"id": "torn', no_id, *good[30:]])
    indexer = indexer_factory(*indexer_overrides(kafka_bootstrap, [topic], templated_search_url, group,
                                                 f"output.elasticsearch.index={index}", "logging.level=debug",
                                                 "output.elasticsearch.username=indexer"),
                              env={"HOSTAUDIT_OUTPUT__ELASTICSEARCH__PASSWORD": "pa55-w0rd-never-shown"})
    stats = indexer.wait_for_stats(lambda s: s["totals"]["dead_lettered"] == 3 and s["totals"]["indexed"] == 60, 60,
                                   "60 documents indexed and 3 dead-lettered")
    assert stats["totals"]["rejected"] == 1 and stats["totals"]["malformed"] == 2
    refresh(templated_search_url, pattern)
    assert count(templated_search_url, pattern) == 60, "every other document is indexed"
    letters = [document for _, document in consume_all(kafka_bootstrap, f"{group}-dead-letter", check=None)]
    assert len(letters) == 3
    by_reason = {letter["reason"].split(":")[0]: letter for letter in letters}
    assert set(by_reason) == {"refused by the engine", "malformed JSON", "no event.id (a non-empty string)"}
    refused = by_reason["refused by the engine"]
    assert "mapper_parsing_exception" in refused["reason"] and "process.pid" in refused["reason"]
    assert refused["event"]["event"]["id"] == wrong_type["event"]["id"], "the document as it was, to re-process"
    assert refused["source"]["topic"] == topic and isinstance(refused["source"]["offset"], int)
    assert by_reason["malformed JSON"]["event"] == '{"event": {"id": "torn' and by_reason["malformed JSON"]["malformed"]
    indexer.wait_for_log("not indexed, sent to the dead-letter topic", 5)

    assert indexer.terminate() == 0
    assert "stopped after indexing and committing everything read" in indexer.log()
    ends = end_offsets(kafka_bootstrap, topic)
    assert committed_offsets(kafka_bootstrap, topic, group) == ends, "every record read was committed"
    assert sum(ends.values()) == 63
    assert "pa55-w0rd-never-shown" not in indexer.log()


def wait_until_all_indexed(indexer, search_url: str, pattern: str, ids: list[str], timeout: float) -> None:
    """Until the engine holds one document per produced event.id and the indexer has nothing left to read."""
    expected = len(set(ids))
    assert expected == len(ids), "the producer made each event.id once"

    def done() -> bool:
        refresh(search_url, pattern)
        if count(search_url, pattern) < expected:
            return False
        partitions = indexer.stats()["partitions"]  # as of each worker's last heartbeat (every second)
        return bool(partitions) and all(figures["lag"] == 0 for figures in partitions.values())

    try:
        wait_for(done, timeout, f"{expected} documents in {pattern}", interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; have {count(search_url, pattern)}; stats {indexer.stats()['totals']}; "
                             f"log:\n{indexer.log()[-3000:]}") from None


def test_kill_9_of_a_worker_mid_stream_five_times_loses_nothing_and_indexes_nothing_twice(
        indexer_factory, test_index, kafka_bootstrap: str, templated_search_url: str) -> None:
    topic, group = unique_name("kill9"), unique_name("group")
    index, pattern = test_index
    create_topic(kafka_bootstrap, topic, 4)
    indexer = indexer_factory(*indexer_overrides(
        kafka_bootstrap, [topic], templated_search_url, group, f"output.elasticsearch.index={index}",
        "indexer.workers=2", "output.elasticsearch.bulk_max_size=100", "supervisor.max_restarts=20"))
    with Load(kafka_bootstrap, topic, rate=400) as load:
        for round_number in range(5):
            before = indexer.stats()["totals"]["indexed"]
            indexer.wait_for_stats(lambda s: s["totals"]["indexed"] >= before + 200, 60,
                                   f"indexing under way before kill {round_number + 1}")
            name = f"worker-{round_number % 2 + 1}"
            victim = indexer.worker_pids()[name]
            os.kill(victim, signal.SIGKILL)  # mid-stream: batches in flight, offsets not committed
            indexer.wait_for_stats(lambda s: s["workers"][name]["up"] and s["workers"][name]["pid"] != victim, 30,
                                   f"{name} restarted after kill {round_number + 1}")
        ids = load.stop()
    wait_until_all_indexed(indexer, templated_search_url, pattern, ids, 90)
    assert count(templated_search_url, pattern) == len(ids), "no document lost, none twice"
    assert duplicated_ids(templated_search_url, pattern) == []
    stats = indexer.stats()
    assert sum(worker["restarts"] for worker in stats["workers"].values()) == 5
    # A killed worker's counts since its last heartbeat (1 s) are lost with it; the rest stay in the totals.
    assert stats["totals"]["indexed"] > sum(worker["indexed"] for worker in stats["workers"].values())


def test_three_workers_share_six_partitions_and_the_others_take_over_from_one_that_dies(
        indexer_factory, test_index, kafka_bootstrap: str, templated_search_url: str) -> None:
    topic, group = unique_name("six"), unique_name("group")
    index, pattern = test_index
    create_topic(kafka_bootstrap, topic, 6)
    indexer = indexer_factory(*indexer_overrides(
        kafka_bootstrap, [topic], templated_search_url, group, f"output.elasticsearch.index={index}",
        "indexer.workers=3", "supervisor.max_restarts=0", "supervisor.failed_retry=1h"))
    stats = indexer.wait_for_stats(
        lambda s: [len(w["partitions"]) for w in s["workers"].values() if w["up"]] == [2, 2, 2], 60,
        "three workers with two partitions each")
    first = [make_event("socket", source={"ip": "10.1.0.1"}) for _ in range(300)]
    produce(kafka_bootstrap, topic, first)
    indexer.wait_for_stats(lambda s: s["totals"]["indexed"] == 300, 60, "the first 300 documents indexed")
    assert all(worker["indexed"] > 0 for worker in indexer.stats()["workers"].values()), "each worker indexed"

    victim = stats["workers"]["worker-2"]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    indexer.wait_for_stats(lambda s: sorted(len(w["partitions"]) for w in s["workers"].values() if w["up"])
                           == [3, 3], 30, "the two other workers holding all six partitions")
    takeover = time.monotonic() - killed_at
    session_timeout = 3.0
    # The group moves the partitions once the dead member's session expires; /stats shows it within about
    # two heartbeats (1 s each) after that.
    assert takeover < session_timeout + 4.0, f"took {takeover:.1f} s"
    print(f"partitions taken over {takeover:.1f} s after the kill (session timeout {session_timeout:g} s)")

    second = [make_event("socket", source={"ip": "10.2.0.1"}) for _ in range(300)]
    produce(kafka_bootstrap, topic, second)
    ids = [event["event"]["id"] for event in first + second]
    wait_until_all_indexed(indexer, templated_search_url, pattern, ids, 60)
    assert count(templated_search_url, pattern) == 600 and duplicated_ids(templated_search_url, pattern) == []
    # The workers' counters come with their next heartbeat (every second), which may follow the documents; the
    # partitions' committed offsets and lag are refreshed every second too, and may come a heartbeat later still.
    stats = indexer.wait_for_stats(lambda s: s["totals"]["indexed"] == 600, 10, "the counters of all 600 documents")
    assert stats["workers"]["worker-2"]["failed"] and not stats["workers"]["worker-2"]["up"]
    stats = indexer.wait_for_stats(
        lambda s: sorted(s["partitions"]) == [f"{topic}/{number}" for number in range(6)] and all(
            figures["lag"] == 0 and figures["committed"] == figures["end"] for figures in s["partitions"].values()),
        10, "every partition committed to its end, no lag")
    metrics = indexer.metrics()
    assert f'hostaudit_indexer_consumer_lag{{topic="{topic}",partition="5"}} 0' in metrics
    assert "hostaudit_indexer_documents_indexed_total 600" in metrics
    assert 'hostaudit_indexer_worker_up{worker="worker-2"} 0' in metrics


@pytest.fixture
def own_search_node(tmp_path: Path):
    """An OpenSearch node of the test's own, to stop and start without disturbing the others."""
    from tests.search_support import OpenSearchNode

    node = OpenSearchNode(tmp_path / "opensearch")
    node.start()
    install_template(node.url)
    yield node
    node.stop()


def test_engine_stopped_30_seconds_under_load_then_started_indexes_everything_once(
        indexer_factory, test_index, kafka_bootstrap: str, own_search_node) -> None:
    topic, group = unique_name("outage"), unique_name("group")
    index, pattern = test_index
    url = own_search_node.url
    create_topic(kafka_bootstrap, topic, 2)
    indexer = indexer_factory(*indexer_overrides(kafka_bootstrap, [topic], url, group,
                                                 f"output.elasticsearch.index={index}", "indexer.workers=2"))
    with Load(kafka_bootstrap, topic, rate=300) as load:
        indexer.wait_for_stats(lambda s: s["totals"]["indexed"] >= 300, 60, "indexing under way")
        own_search_node.stop()
        down_at = time.monotonic()
        stats = indexer.wait_for_stats(lambda s: not s["engine_up"], 30, "the indexer to see the engine down")
        assert "not taking documents" in indexer.log() or stats["totals"]["retries"] > 0
        paused = indexer.wait_for_stats(lambda s: all(w["paused"] for w in s["workers"].values()), 30,
                                        "consuming paused")["totals"]
        wait_for(lambda: time.monotonic() - down_at >= 30, 31, "30 s of outage", interval=0.5)
        stats = indexer.stats()
        assert stats["totals"]["records"] == paused["records"], "nothing more was read while the engine was down"
        assert stats["totals"]["lag"] > paused["lag"], "the lag shows the records waiting"
        indexed_while_down = stats["totals"]["indexed"]
        own_search_node.restart_same_data()
        indexer.wait_for_stats(lambda s: s["engine_up"] and s["totals"]["indexed"] > indexed_while_down, 60,
                               "indexing again after the engine came back")
        ids = load.stop()
    wait_until_all_indexed(indexer, url, pattern, ids, 90)
    assert count(url, pattern) == len(ids) and duplicated_ids(url, pattern) == []
    assert indexer.stats()["totals"]["retries"] > 0
    indexer.wait_for_log("the engine takes documents again after", 5)


def test_indexers_joining_and_leaving_the_group_under_load_lose_nothing(
        indexer_factory, test_index, kafka_bootstrap: str, templated_search_url: str) -> None:
    """Scale-out on several machines: a second and a third indexer join the group under load, then leave.
    Each rebalance revokes every partition and gives most of them back to the member that had them, whose
    position kafka-python keeps: what it had read and not yet sent must still be written."""
    topic, group = unique_name("join"), unique_name("group")
    index, pattern = test_index
    create_topic(kafka_bootstrap, topic, 6)
    overrides = indexer_overrides(kafka_bootstrap, [topic], templated_search_url, group,
                                  f"output.elasticsearch.index={index}", "output.elasticsearch.bulk_max_size=150")
    first = indexer_factory(*overrides)
    with Load(kafka_bootstrap, topic, rate=500) as load:
        first.wait_for_stats(lambda s: s["totals"]["indexed"] >= 300, 60, "the first indexer under way")
        others = []
        for number in (2, 3):
            others.append(indexer_factory(*overrides))
            others[-1].wait_for_stats(lambda s: s["totals"]["indexed"] >= 100, 60, f"indexer {number} under way")
        for other in others:
            assert other.terminate() == 0  # leaves the group: its partitions go back to the first
            first.wait_for_stats(lambda s: s["totals"]["indexed"] >= 100, 30, "the first indexing on")
        first.wait_for_stats(lambda s: len(s["partitions"]) == 6, 30, "all six partitions back with the first")
        ids = load.stop()
    wait_until_all_indexed(first, templated_search_url, pattern, ids, 60)
    assert count(templated_search_url, pattern) == len(ids) and duplicated_ids(templated_search_url, pattern) == []
