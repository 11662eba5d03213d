"""For the indexer's tests: the real `hostaudit index` as a subprocess, ECS-shaped events produced to real
Kafka topics, and the few search-engine calls the tests make (index template, refresh, count, search)."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from actors.event import iso_millis, new_event_id
from tests.agent_harness import HostauditProcess, wait_for
from tests.search_support import http_json

# A plain opener: no http_proxy from the environment between the tests and a node on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the indexer ---------------------------------------------------------------------------------------------


def indexer_overrides(bootstrap: str, topics: Iterable[str], search_url: str, group: str, *extra: str
                      ) -> tuple[str, ...]:
    """The settings every test gives: its broker, topics, group and engine, fast retries and restarts."""
    return (f"input.kafka.hosts=[{bootstrap}]", f"input.kafka.topics=[{', '.join(topics)}]",
            f"input.kafka.group_id={group}", f"input.kafka.dead_letter_topic={group}-dead-letter",
            "input.kafka.session_timeout=3s", f"output.elasticsearch.hosts=[{search_url}]",
            "output.elasticsearch.backoff.init=100ms", "output.elasticsearch.backoff.max=1s",
            "supervisor.backoff.initial=100ms", "supervisor.backoff.max=1s", "http.enabled=true", "http.port=0",
            *extra)


class IndexerProcess(HostauditProcess):
    """One `hostaudit index` subprocess, its log in a file, its /stats over HTTP."""

    def __init__(self, workdir: Path, overrides: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / f"indexer-{uuid.uuid4().hex[:6]}.log", overrides, env)
        self._stats_url = ""

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "actors.cli", "index"]
        for override in self.overrides:
            command += ["-E", override]
        return command

    def stats(self) -> dict[str, Any]:
        if not self._stats_url:
            found = wait_for(lambda: re.search(r"monitoring endpoint on (http://\S+/stats)", self.log()), 60,
                             f"the monitoring endpoint; log:\n{self.log()[-3000:]}")
            self._stats_url = found.group(1)
        with _OPENER.open(self._stats_url, timeout=10) as response:
            return json.loads(response.read())

    def metrics(self) -> str:
        self.stats()
        with _OPENER.open(self._stats_url.replace("/stats", "/metrics"), timeout=10) as response:
            return response.read().decode()

    def worker_pids(self) -> dict[str, int]:
        """The pids of the workers running now, by name."""
        return {name: worker["pid"] for name, worker in self.stats()["workers"].items() if worker["up"]}

    def wait_for_stats(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> Any:
            nonlocal last
            last = self.stats()
            return predicate(last) and last

        try:
            return wait_for(check, timeout, what, interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}; last stats: {json.dumps(last)[:2000]}; log:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (a drain commits first, so longer than the agent's); the exit code."""
        return super().terminate(timeout)


# --- Kafka ---------------------------------------------------------------------------------------------------


def make_event(dataset: str = "process", **fields: Any) -> dict[str, Any]:
    """An event shaped as the agent's (ECS, a unique time-ordered event.id), with `fields` merged in."""
    document: dict[str, Any] = {"@timestamp": iso_millis(time.time()),
                                "event": {"id": new_event_id(), "dataset": dataset, "module": "system",
                                          "kind": "event", "action": "test"},
                                "message": f"a {dataset} test event", "host": {"name": "indexer-test"}}
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return document


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    wait_for(lambda: len(end_offsets(bootstrap, name)) == partitions, 30, f"topic {name} with {partitions} partitions")


def produce(bootstrap: str, topic: str, payloads: Iterable[bytes | dict[str, Any]],
            producer: KafkaProducer | None = None) -> int:
    """Send each payload (a dict is JSON-encoded) to the partitions in turn; wait for the broker."""
    own = producer is None
    producer = producer or KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = 0
    try:
        partitions = sorted(producer.partitions_for(topic))
        for payload in payloads:
            value = json.dumps(payload).encode() if isinstance(payload, dict) else payload
            producer.send(topic, value=value, partition=partitions[sent % len(partitions)])
            sent += 1
        producer.flush(timeout=60)
    finally:
        if own:
            producer.close(timeout=10)
    return sent


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in consumer.partitions_for_topic(topic) or ()}
    finally:
        consumer.close(autocommit=False)


# --- the search engine ---------------------------------------------------------------------------------------


# The index template the tests install: the one `hostaudit export template --flavor opensearch --replicas 0`
# prints (data streams for hostaudit-*, every field of hostaudit's events mapped with its ECS type).
TEMPLATE_PATTERN = "hostaudit-*"


def template_body() -> dict[str, Any]:
    from actors.template import index_template

    body, _ = index_template(flavor="opensearch", replicas=0)
    assert body["index_patterns"] == [TEMPLATE_PATTERN] and "data_stream" in body
    return body


def install_template(search_url: str) -> None:
    status, body = http_json(f"{search_url}/_index_template/hostaudit", "PUT", template_body())
    assert status == 200, body


def refresh(search_url: str, index: str = TEMPLATE_PATTERN) -> None:
    http_json(f"{search_url}/{index}/_refresh", "POST")


def count(search_url: str, index: str, query: Mapping[str, Any] | None = None) -> int:
    status, body = http_json(f"{search_url}/{index}/_count", "POST", {"query": query or {"match_all": {}}})
    if status == 404:
        return 0
    assert status == 200, body
    return int(body["count"])


def search(search_url: str, index: str, body: Mapping[str, Any]) -> dict[str, Any]:
    status, answer = http_json(f"{search_url}/{index}/_search", "POST", body)
    assert status == 200, answer
    return answer


class Load:
    """A background producer: `rate` events a second to `topic` (to its partitions in turn) until
    stopped; `ids` are the event.ids the broker acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: float, dataset: str = "process") -> None:
        self.bootstrap, self.topic, self.rate, self.dataset = bootstrap, topic, rate, dataset
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            started, sent = time.monotonic(), 0
            partitions = sorted(producer.partitions_for(self.topic))
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate) - sent
                batch = [make_event(self.dataset, process={"pid": sent + number}) for number in range(max(0, due))]
                for number, event in enumerate(batch):
                    producer.send(self.topic, value=json.dumps(event).encode(),
                                  partition=partitions[(sent + number) % len(partitions)])
                producer.flush(timeout=60)
                self.ids += [event["event"]["id"] for event in batch]
                sent += len(batch)
                self._stop.wait(0.05)
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error
        finally:
            producer.close(timeout=10)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(60)
        assert self.error is None, f"the load producer failed: {self.error!r}"
        return self.ids
