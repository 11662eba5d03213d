"""The indexer's figures: /stats (JSON) and /metrics (Prometheus) from the workers' heartbeats, totals kept
across worker restarts, documents per second, lag per partition; and the same in the log."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Mapping

from actors.runtime.monitoring import metric_lines

log = logging.getLogger("hostaudit.indexer")

# Counters a worker reports (since it started); the supervisor adds those of its previous runs.
COUNTERS = ("records", "indexed", "duplicates", "rejected", "malformed", "dead_lettered", "retries",
            "retried_documents", "bulk_requests", "batches", "committed_batches", "commit_failures")
RATE_WINDOW = 10.0  # seconds over which docs/s is measured


class IndexerStats:
    """Builds the stats document from the supervisor's view of its workers (thread-safe: the HTTP server and
    the supervising loop both ask)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired: collections.Counter[str] = collections.Counter()  # counters of workers' previous runs
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def retire(self, heartbeat: Mapping[str, Any]) -> None:
        """A worker exited: keep its last counters in the totals (its next run counts from 0)."""
        with self._lock:
            for name in COUNTERS:
                self._retired[name] += int(heartbeat.get(name, 0) or 0)

    def build(self, children: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        with self._lock:
            totals = {name: self._retired[name] for name in COUNTERS}
            workers: dict[str, Any] = {}
            partitions: dict[str, Any] = {}
            for name, child in sorted(children.items()):
                up = bool(child.get("alive")) and not child.get("failed")
                workers[name] = {
                    "up": up, "failed": bool(child.get("failed")), "restarts": int(child.get("restarts", 0)),
                    "pid": child.get("pid"), "engine_up": bool(child.get("engine_up", True)),
                    "paused": bool(child.get("paused", False)), "last_error": str(child.get("last_error", "")),
                    "partitions": sorted(child.get("partitions", {}) if up else ()),
                    **{counter: int(child.get(counter, 0) or 0) for counter in COUNTERS},
                }
                for counter in COUNTERS:
                    totals[counter] += workers[name][counter]
                if up:
                    for key, figures in (child.get("partitions") or {}).items():
                        partitions[key] = {**figures, "worker": name}
            written = totals["indexed"] + totals["duplicates"]
            now = time.monotonic()
            self._samples.append((now, written))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()
            first_at, first = self._samples[0]
            rate = (written - first) / (now - first_at) if now - first_at >= 0.5 else 0.0
        lags = [figures["lag"] for figures in partitions.values() if figures.get("lag") is not None]
        return {
            "workers": workers,
            "totals": {**totals, "docs_per_second": round(rate, 1), "lag": sum(lags)},
            "engine_up": all(worker["engine_up"] for worker in workers.values() if worker["up"]),
            "partitions": dict(sorted(partitions.items())),
        }


def prometheus_text(stats: Mapping[str, Any]) -> str:
    """The indexer's stats in Prometheus text exposition format."""
    totals, workers = stats["totals"], stats["workers"]
    lines: list[str] = []

    def total(name: str, key: str, help_text: str) -> None:
        lines.extend(metric_lines(f"indexer_{name}", "counter", help_text, [("", totals[key])]))

    total("records_total", "records", "Kafka records read")
    total("documents_indexed_total", "indexed", "Documents the engine created")
    total("documents_duplicate_total", "duplicates", "Documents already in the engine (409: the same event.id)")
    total("documents_rejected_total", "rejected", "Documents the engine refused (400), sent to the dead-letter topic")
    total("records_malformed_total", "malformed", "Records that are not indexable JSON events, sent to the "
                                                  "dead-letter topic")
    total("dead_lettered_total", "dead_lettered", "Records the dead-letter topic acknowledged")
    total("bulk_retries_total", "retries", "Failed attempts made again (429, 5xx, engine or dead-letter "
                                           "topic unreachable)")
    total("bulk_requests_total", "bulk_requests", "_bulk requests answered")
    lines += metric_lines("indexer_documents_per_second", "gauge",
                          f"Documents written (created or duplicate) per second over the last {RATE_WINDOW:g} s",
                          [("", totals["docs_per_second"])])
    lines += metric_lines("indexer_engine_up", "gauge", "1 while every worker's engine takes documents",
                          [("", float(stats["engine_up"]))])
    lines += metric_lines("indexer_consumer_lag", "gauge", "Records in the partition after the committed offset",
                          [(f'{{topic="{figures["topic"]}",partition="{figures["partition"]}"}}', figures["lag"])
                           for figures in stats["partitions"].values() if figures.get("lag") is not None])
    lines += metric_lines("indexer_worker_up", "gauge", "1 while the worker process runs",
                          [(f'{{worker="{name}"}}', float(worker["up"])) for name, worker in workers.items()])
    lines += metric_lines("indexer_worker_restarts_total", "counter", "Restarts of the worker process",
                          [(f'{{worker="{name}"}}', worker["restarts"]) for name, worker in workers.items()])
    return "\n".join(lines) + "\n"


def log_stats(stats: Mapping[str, Any]) -> None:
    """The figures as one log line."""
    totals = stats["totals"]
    up = sum(1 for worker in stats["workers"].values() if worker["up"])
    log.info("stats: %d/%d workers up; %d indexed, %d duplicates, %d dead-lettered, %d retries; %.1f docs/s; "
             "lag %d%s", up, len(stats["workers"]), totals["indexed"], totals["duplicates"],
             totals["dead_lettered"], totals["retries"], totals["docs_per_second"], totals["lag"],
             "" if stats["engine_up"] else "; the engine is not taking documents")
