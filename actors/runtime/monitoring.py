"""Agent metrics: /stats (JSON) and /metrics (Prometheus text) over HTTP, and the same counters in the log; the
HTTP endpoint and the metric lines also serve the indexer."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from actors.runtime.spool import spool_size

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

log = logging.getLogger("hostaudit.monitoring")

PRODUCER = "producer"


def build_stats(children: Mapping[str, Mapping[str, Any]], spool_root: Path) -> dict[str, Any]:
    """One JSON-able document of the agent's counters from the supervisor's view of its children."""
    producer = children.get(PRODUCER, {})
    acknowledged = producer.get("acknowledged", {}) or {}
    dead_lettered = producer.get("dead_lettered", {}) or {}
    datasets = {}
    for name, child in children.items():
        if name == PRODUCER:
            continue
        datasets[name] = {
            "up": bool(child.get("alive")) and not child.get("failed"),
            "failed": bool(child.get("failed")),
            "restarts": int(child.get("restarts", 0)),
            "events_emitted": int(child.get("events", 0)),  # every emitted event is spooled first
            "events_acknowledged": int(acknowledged.get(name, 0)),
            "events_dead_lettered": int(dead_lettered.get(name, 0)),
            "last_scan_seconds": float(child.get("scan_seconds", 0.0)),
            "spool_full": bool(child.get("blocked", False)),
            "kernel_events": int(child.get("items", 0)),
            "kernel_events_lost": int(child.get("lost", 0)),
            "events_dropped": int(child.get("dropped", 0)),
        }
    return {
        "datasets": datasets,
        "output": {
            "up": bool(producer.get("alive")),
            "restarts": int(producer.get("restarts", 0)),
            "events_acknowledged": sum(int(v) for v in acknowledged.values()),
            "events_dead_lettered": sum(int(v) for v in dead_lettered.values()),
            "failed_batches": int(producer.get("failed_batches", 0)),
            "events_truncated": int(producer.get("truncated", 0)),
            "events_dropped": sum(d["events_dropped"] for d in datasets.values()),  # never after spooling
            "oldest_unacknowledged_age_seconds": float(producer.get("oldest_unacknowledged_age_seconds", 0.0)),
            "last_error": producer.get("last_error", ""),
        },
        "spool": {"bytes": spool_size(spool_root), "pending_bytes": int(producer.get("spool_pending_bytes", 0))},
    }


def metric_lines(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    """One Prometheus metric `hostaudit_<name>`: its HELP and TYPE lines and a line per (labels, value)."""
    return [f"# HELP hostaudit_{name} {help_text}", f"# TYPE hostaudit_{name} {kind}",
            *(f"hostaudit_{name}{labels} {value:g}" for labels, value in samples)]


def prometheus_text(stats: Mapping[str, Any]) -> str:
    """The stats document in Prometheus text exposition format."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend(metric_lines(name, kind, help_text, samples))

    datasets = stats["datasets"]

    def per_dataset(key: str) -> list[tuple[str, float]]:
        return [(f'{{dataset="{name}"}}', float(values[key])) for name, values in datasets.items()]

    metric("dataset_up", "gauge", "1 while the dataset's collector runs", per_dataset("up"))
    metric("events_emitted_total", "counter", "Events a dataset emitted and spooled", per_dataset("events_emitted"))
    metric("events_acknowledged_total", "counter", "Events the output acknowledged",
           per_dataset("events_acknowledged"))
    metric("events_dead_lettered_total", "counter", "Events the output refused for good, kept in path.data/dead-letter",
           per_dataset("events_dead_lettered"))
    metric("collector_restarts_total", "counter", "Restarts of a dataset's process", per_dataset("restarts"))
    metric("last_scan_duration_seconds", "gauge", "Duration of the dataset's last collection cycle",
           per_dataset("last_scan_seconds"))
    metric("kernel_events_lost_total", "counter", "Kernel notifications dropped before hostaudit read them",
           per_dataset("kernel_events_lost"))
    output = stats["output"]
    metric("output_failed_batches_total", "counter", "Batches the output refused (kept and sent again)",
           [("", output["failed_batches"])])
    metric("events_truncated_total", "counter", "Oversize events sent truncated", [("", output["events_truncated"])])
    metric("events_dropped_total", "counter", "Events lost by hostaudit", [("", output["events_dropped"])])
    metric("output_restarts_total", "counter", "Restarts of the producer process", [("", output["restarts"])])
    metric("oldest_unacknowledged_age_seconds", "gauge", "Age of the oldest event not yet acknowledged",
           [("", output["oldest_unacknowledged_age_seconds"])])
    metric("spool_bytes", "gauge", "Bytes in the durable spool", [("", stats["spool"]["bytes"])])
    metric("spool_pending_bytes", "gauge", "Spooled bytes not yet acknowledged", [("", stats["spool"]["pending_bytes"])])
    return "\n".join(lines) + "\n"


def serve(host: str, port: int, get_stats: Callable[[], dict[str, Any]],
          metrics: Callable[[Mapping[str, Any]], str] = prometheus_text) -> ThreadingHTTPServer:
    """Start the monitoring endpoint in a daemon thread and return the server: /stats is `get_stats()` as JSON,
    /metrics the same figures as `metrics` renders them (Prometheus text). http.server is imported here only:
    the endpoint is off by default, and the supervisor stays smaller without it (1.9 MiB)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] == "/stats":
                body, kind = json.dumps(get_stats(), indent=2).encode(), "application/json"
            elif self.path.split("?")[0] == "/metrics":
                body, kind = metrics(get_stats()).encode(), "text/plain; version=0.0.4"
            else:
                self.send_error(404, "try /stats or /metrics")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("monitoring endpoint on http://%s:%d/stats and /metrics", host, server.server_address[1])
    return server


def log_stats(stats: Mapping[str, Any]) -> None:
    """The counters as one log line."""
    def describe(name: str, values: Mapping[str, Any]) -> str:
        text = f"{name}: {values['events_emitted']} emitted/{values['events_acknowledged']} acked"
        if values["restarts"]:
            text += f", {values['restarts']} restarts"
        if values["kernel_events_lost"]:  # the kernel's buffer overflowed: short-lived processes may be missing
            text += f", {values['kernel_events_lost']} kernel notifications lost"
        return text + (" FAILED" if values["failed"] else "")

    datasets = "; ".join(describe(name, values) for name, values in stats["datasets"].items())
    output = stats["output"]
    log.info("stats: %s; output: %d failed batches, %d truncated, oldest unacked %.1f s; spool %d bytes",
             datasets, output["failed_batches"], output["events_truncated"],
             output["oldest_unacknowledged_age_seconds"], stats["spool"]["bytes"])
