"""Benchmark of `hostaudit index`: docs/s of one worker from a pre-filled topic into a real OpenSearch, side by side
with a bare bulk loop of the same documents through the same client (no Kafka) and through opensearch-py; then
1, 2 and 3 workers, with the CPU of every process involved (where it goes on this 2-core machine)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "kafka"))
sys.path.insert(0, str(REPO / "ops" / "opensearch"))

import psutil  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from actors.event import iso_millis, new_event_id  # noqa: E402
from actors.indexer.bulk import BulkClient  # noqa: E402
from actors.indexer.documents import Document, DocumentReader, Source  # noqa: E402
from actors.indexer.settings import load_indexer_settings  # noqa: E402
from actors.indexer.writer import _body, _chunks  # noqa: E402
from broker import KafkaBroker  # noqa: E402
from cpu import cpu_self  # noqa: E402  (ops/bench/cpu.py)
from node import DEFAULT_JVM_OPTS, OpenSearchNode, http_json  # noqa: E402

DATASETS = ("host", "process", "socket", "user")
DEADLINE_SECONDS = 900.0  # per measured path: a stuck run fails instead of hanging the benchmark
SETTLE_SECONDS = 60.0  # the longest the clock waits for every worker to hold partitions
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- documents -------------------------------------------------------------------------------------------------


def make_documents(count: int, seed: int = 5) -> list[bytes]:
    """`count` events shaped as the agent's (the four datasets' sample documents, in turn), each with its own
    event.id, timestamp, pid, ports and ids: encoded compactly as the agent sends them (about 1 KB each)."""
    rng = random.Random(seed)
    samples = [json.loads((REPO / "actors" / "datasets" / name / "sample.json").read_text()) for name in DATASETS]
    base = datetime(2026, 11, 30, 9, 0, 0, tzinfo=timezone.utc)
    documents = []
    for number in range(count):
        document = copy.deepcopy(samples[number % len(samples)])
        document["@timestamp"] = iso_millis((base + timedelta(milliseconds=number * 3)).timestamp())
        document["event"]["id"] = new_event_id()
        document["event"]["sequence"] = number + 1
        if "process" in document:
            document["process"]["pid"] = rng.randrange(300, 4_000_000)
        if "source" in document and "port" in document["source"]:
            document["source"]["port"] = rng.randrange(1024, 65536)
        documents.append(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())
    return documents


TEMPLATE = {"index_patterns": ["hostaudit-bench*"], "data_stream": {}, "priority": 600,
            "template": {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}}


def engine_count(url: str, index: str) -> int:
    http_json(f"{url}/{index}/_refresh", "POST")
    status, body = http_json(f"{url}/{index}/_count")
    return int(body["count"]) if status == 200 else 0


def drop(url: str, pattern: str) -> None:
    http_json(f"{url}/_data_stream/{pattern}", "DELETE")


# --- the paths -------------------------------------------------------------------------------------------------


def engine_settings(url: str, bulk_max_size: int):
    return load_indexer_settings(None, ["input.kafka.hosts=[unused:9092]", f"output.elasticsearch.hosts=[{url}]",
                                        f"output.elasticsearch.bulk_max_size={bulk_max_size}"], environ={})


def bare_loop(url: str, documents: list[bytes], index: str, bulk_max_size: int) -> dict[str, float]:
    """The same documents through the indexer's own bulk client and body builder, one request after the other:
    no Kafka, no actors, no processes."""
    settings = engine_settings(url, bulk_max_size)
    reader = DocumentReader(index)
    client = BulkClient(settings.engine)
    started, cpu = time.monotonic(), cpu_self()
    for start in range(0, len(documents), bulk_max_size):
        batch = [reader.read(Source("bench", 0, start + n), value) for n, value in
                 enumerate(documents[start:start + bulk_max_size])]
        for chunk in _chunks(batch, settings.engine.bulk_max_bytes):
            results = client.bulk(_body(chunk), len(chunk))
            assert all(result.status < 300 for result in results), results[:3]
    elapsed, cpu = time.monotonic() - started, cpu_self() - cpu
    client.close()
    return {"seconds": elapsed, "docs_per_second": len(documents) / elapsed, "client_cpu_us": cpu / len(documents) * 1e6}


def opensearch_py_loop(url: str, documents: list[bytes], index: str, bulk_max_size: int) -> dict[str, float] | None:
    """The same bodies (built as the bare loop builds them) sent by opensearch-py's `bulk`, if it is installed."""
    try:
        from opensearchpy import OpenSearch
    except ImportError:
        return None
    client = OpenSearch([url], timeout=90, http_compress=False)
    reader = DocumentReader(index)
    started, cpu = time.monotonic(), cpu_self()
    for start in range(0, len(documents), bulk_max_size):
        batch: list[Document] = [reader.read(Source("bench", 0, start + n), value) for n, value in
                                 enumerate(documents[start:start + bulk_max_size])]
        answer = client.bulk(body=_body(batch), filter_path="errors,items.*.status,items.*.error")
        assert not answer.get("errors"), str(answer)[:300]
    elapsed, cpu = time.monotonic() - started, cpu_self() - cpu
    client.close()
    return {"seconds": elapsed, "docs_per_second": len(documents) / elapsed, "client_cpu_us": cpu / len(documents) * 1e6}


def prefill(bootstrap: str, topic: str, partitions: int, documents: list[bytes]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024,
                             compression_type="lz4")
    for value in documents:
        producer.send(topic, value=value)
    producer.flush(timeout=300)
    producer.close()


def process_cpu(pids: list[int]) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            cpu[pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return cpu


def indexer_run(url: str, bootstrap: str, topic: str, partitions: int, workers: int, count: int, index: str,
                workdir: Path, engine_pid: int | None, broker_pid: int | None, bulk_max_size: int) -> dict[str, Any]:
    """`hostaudit index` with `workers` workers reading the pre-filled topic (a new consumer group) until the
    engine holds every document; the clock runs from the moment the group is settled (every worker holds
    partitions) and indexing under way, to the last document."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    log_path = workdir / f"{group}.log"
    command = [sys.executable, "-m", "actors.cli", "index", "-E", f"input.kafka.hosts=[{bootstrap}]",
               "-E", f"input.kafka.topics=[{topic}]", "-E", f"input.kafka.group_id={group}",
               "-E", f"output.elasticsearch.hosts=[{url}]", "-E", f"output.elasticsearch.index={index}",
               "-E", f"output.elasticsearch.bulk_max_size={bulk_max_size}", "-E", f"indexer.workers={workers}",
               "-E", "http.enabled=true", "-E", "http.port=0", "-E", f"input.kafka.dead_letter_topic={group}-dlq"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        stats_url = ""
        while not stats_url:
            found = re.search(r"monitoring endpoint on (http://\S+/stats)", log_path.read_text())
            stats_url = found.group(1) if found else ""
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the indexer did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)

        def stats() -> dict[str, Any]:
            with _OPENER.open(stats_url, timeout=10) as response:
                return json.loads(response.read())

        def steady(figures: dict[str, Any]) -> bool:
            """Indexing, and the group settled: every worker holds partitions (so no rebalance is due)."""
            held = [len(worker["partitions"]) for worker in figures["workers"].values() if worker["up"]]
            return figures["totals"]["indexed"] > 0 and len(held) == workers and all(held) and \
                sum(held) == partitions

        first = stats()
        settle_by = time.monotonic() + SETTLE_SECONDS
        while not steady(first):
            if time.monotonic() > settle_by and first["totals"]["indexed"] > 0:
                break  # measured anyway: the report shows how the partitions were shared
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing indexed:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.02)
            first = stats()
        started = time.monotonic()
        tree = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        watched = tree + [pid for pid in (engine_pid, broker_pid) if pid]
        cpu_before = process_cpu(watched)
        current = first
        while current["totals"]["indexed"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"indexed {current['totals']['indexed']} of {count}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)
            current = stats()
        elapsed = time.monotonic() - started
        cpu_after = process_cpu(watched)
        spent = {pid: cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0) for pid in watched}
        worker_pids = [w["pid"] for w in current["workers"].values()]
        done = current["totals"]["indexed"] - first["totals"]["indexed"]
        requests = current["totals"]["bulk_requests"] - first["totals"]["bulk_requests"]
        return {
            "workers": workers, "seconds": elapsed, "docs_per_second": done / elapsed,
            "partitions": [len(w["partitions"]) for w in current["workers"].values()],
            "cpu_workers": sum(spent.get(pid, 0.0) for pid in worker_pids) / elapsed,
            "cpu_indexer_other": sum(spent.get(pid, 0.0) for pid in tree if pid not in worker_pids) / elapsed,
            "cpu_engine": spent.get(engine_pid, 0.0) / elapsed if engine_pid else float("nan"),
            "cpu_broker": spent.get(broker_pid, 0.0) / elapsed if broker_pid else float("nan"),
            "worker_cpu_us": sum(spent.get(pid, 0.0) for pid in worker_pids) / done * 1e6,
            "engine_cpu_us": spent.get(engine_pid, 0.0) / done * 1e6 if engine_pid else float("nan"),
            "docs_per_request": done / max(1, requests), "measured_docs": done,
            "duplicates": current["totals"]["duplicates"], "dead_lettered": current["totals"]["dead_lettered"],
        }
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)


def micro(bootstrap: str, topic: str, documents: list[bytes], index: str) -> dict[str, float]:
    """CPU per document of the worker's own steps, alone: kafka-python reading the records, and DocumentReader."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=2000, fetch_max_bytes=50 * 1024 * 1024)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    read, cpu = 0, cpu_self()
    while read < len(documents):
        read += sum(len(records) for records in consumer.poll(timeout_ms=1000).values())
    kafka_us = (cpu_self() - cpu) / read * 1e6
    consumer.close()
    reader = DocumentReader(index)
    cpu = cpu_self()
    for number, value in enumerate(documents):
        reader.read(Source(topic, 0, number), value)
    parse_us = (cpu_self() - cpu) / len(documents) * 1e6
    return {"kafka_read_us": kafka_us, "document_us": parse_us}


# --- the run ---------------------------------------------------------------------------------------------------


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(result[key] for result in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20_000, help="documents per measured path (default 20000)")
    parser.add_argument("--runs", type=int, default=2, help="rounds of every path, interleaved (default 2)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure (default 1,2,3)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--bulk-max-size", type=int, default=1600, help="documents per _bulk (the default 1600)")
    parser.add_argument("--bootstrap", help="a running broker (default: start one)")
    parser.add_argument("--search-url", help="a running OpenSearch (default: start one)")
    parser.add_argument("--tiered", action="store_true", help="the node with C1+C2 (default: C1 only, as the tests)")
    parser.add_argument("--workdir", type=Path)
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="bench-indexer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    worker_counts = [int(n) for n in arguments.workers.split(",")]
    broker = node = None
    try:
        if arguments.bootstrap:
            bootstrap, broker_pid = arguments.bootstrap, None
        else:
            broker = KafkaBroker(workdir / "kafka")
            broker.start()
            bootstrap, broker_pid = broker.bootstrap, broker.pid
        if arguments.search_url:
            url, engine_pid = arguments.search_url.rstrip("/"), None
        else:
            opts = tuple(o for o in DEFAULT_JVM_OPTS if not (arguments.tiered and "TieredStopAtLevel" in o))
            node = OpenSearchNode(workdir / "opensearch", jvm_opts=opts)
            node.start()
            url, engine_pid = node.url, node.pid
        status, body = http_json(f"{url}/_index_template/hostaudit-bench", "PUT", TEMPLATE)
        assert status == 200, body
        documents = make_documents(arguments.docs)
        sizes = [len(value) for value in documents]
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        prefill(bootstrap, topic, arguments.partitions, documents)
        # warm-up: the engine creates its first data stream and JIT-compiles the bulk path
        bare_loop(url, documents[:4000], "hostaudit-benchwarmup-%{[event.dataset]}", arguments.bulk_max_size)
        drop(url, "hostaudit-benchwarmup-*")

        results: dict[str, list[dict[str, Any]]] = {}
        paths: list[tuple[str, Callable[[str], dict[str, Any] | None]]] = [
            ("bare", lambda index: bare_loop(url, documents, index, arguments.bulk_max_size)),
            ("opensearch-py", lambda index: opensearch_py_loop(url, documents, index, arguments.bulk_max_size)),
            *[(f"workers={n}", lambda index, n=n: indexer_run(url, bootstrap, topic, arguments.partitions, n,
                                                             len(documents), index,
                                                             workdir, engine_pid, broker_pid,
                                                             arguments.bulk_max_size))
              for n in worker_counts],
        ]
        for round_number in range(arguments.runs):
            order = paths[round_number % len(paths):] + paths[:round_number % len(paths)]
            for name, run in order:
                prefix = f"hostaudit-bench{round_number}-{re.sub('[^a-z0-9]', '', name)}"
                result = run(f"{prefix}-%{{[event.dataset]}}")
                if result is None:
                    continue
                indexed = engine_count(url, f"{prefix}-*")
                assert indexed == len(documents), f"{name}: {indexed} of {len(documents)} in the engine"
                drop(url, f"{prefix}-*")
                results.setdefault(name, []).append(result)
                print(f"  round {round_number + 1} {name}: {result['docs_per_second']:.0f} docs/s", file=sys.stderr)
        figures = micro(bootstrap, topic, documents, "hostaudit-x-%{[event.dataset]}")
        report(arguments, results, figures, sizes)
    finally:
        if node is not None:
            node.stop()
        if broker is not None:
            broker.stop()
    return 0


def report(arguments: argparse.Namespace, results: dict[str, list[dict[str, Any]]], figures: dict[str, float],
           sizes: list[int]) -> None:
    bare = median(results["bare"], "docs_per_second")
    print(f"## hostaudit index: {arguments.docs:,} documents ({statistics.mean(sizes):.0f} bytes on average, the "
          f"four datasets' sample events), {arguments.partitions} partitions, bulk_max_size "
          f"{arguments.bulk_max_size}, medians of {arguments.runs} interleaved rounds\n")
    print("| path | docs/s | vs bare loop | docs per _bulk | client/worker CPU per doc | CPU (cores): workers / "
          "engine / broker |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        rate = median(runs, "docs_per_second")
        if name in ("bare", "opensearch-py"):
            print(f"| {name} loop (no Kafka) | {rate:,.0f} | {rate / bare:.0%} | {arguments.bulk_max_size} | "
                  f"{median(runs, 'client_cpu_us'):.0f} µs | — |")
        else:
            print(f"| `hostaudit index`, {name} (partitions {runs[-1]['partitions']}) | {rate:,.0f} | "
                  f"{rate / bare:.0%} | {median(runs, 'docs_per_request'):.0f} | {median(runs, 'worker_cpu_us'):.0f} µs | "
                  f"{median(runs, 'cpu_workers'):.2f} / {median(runs, 'cpu_engine'):.2f} / "
                  f"{median(runs, 'cpu_broker'):.2f} |")
    one = results.get("workers=1")
    if one:
        print(f"\nEngine CPU per document with one worker: {median(one, 'engine_cpu_us'):.0f} µs. Worker steps alone: "
              f"kafka-python reading a record {figures['kafka_read_us']:.0f} µs, DocumentReader "
              f"{figures['document_us']:.0f} µs, the bulk client {median(results['bare'], 'client_cpu_us'):.0f} µs "
              f"(bare loop, body building and HTTP included).")


if __name__ == "__main__":
    sys.exit(main())
