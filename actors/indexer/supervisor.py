"""The indexer's root actor and foreground run: one OS process per worker, supervised like the agent's
collectors (restarts with backoff and restart intensity), /stats and /metrics, SIGTERM drains every worker."""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any

from actors.indexer.monitoring import IndexerStats, log_stats, prometheus_text
from actors.indexer.settings import IndexerSettings
from actors.indexer.worker import WorkerSpec, worker_main
from actors.runtime.forkserver import forkserver_context
from actors.runtime.monitoring import serve
from actors.runtime.supervision import Child, ProcessSupervisor, Shutdown, Status, StopSignals, Wakeup

log = logging.getLogger("hostaudit.indexer")

DEFAULT_HANG_TIMEOUT = 120.0
STATS_LOG_INTERVAL = 30.0
STOP_MARGIN = 10.0  # beyond indexer.drain_timeout: closing the consumer, stopping the actors


class IndexerSupervisor(ProcessSupervisor):
    """Starts `indexer.workers` worker processes and keeps them running; their counters survive restarts."""

    others = "the other workers"

    def __init__(self, settings: IndexerSettings, context: BaseContext, stats: IndexerStats,
                 stop_requested: threading.Event | None = None, known_pids: list[int] | None = None,
                 wakeup: Wakeup | None = None) -> None:
        super().__init__(settings.supervisor, context, stop_requested, known_pids, wakeup)
        self.stats = stats
        self.stop_seconds = settings.drain_timeout + STOP_MARGIN
        for number in range(1, settings.workers + 1):
            spec = WorkerSpec(number, settings)
            self.children[spec.name] = Child(spec.name, worker_main, spec,
                                             settings.supervisor.hang_timeout or DEFAULT_HANG_TIMEOUT)

    def child_exited(self, child: Child) -> None:
        self.stats.retire(child.last_heartbeat)
        child.last_heartbeat = {}


def run(settings: IndexerSettings) -> int:
    """Run the indexer in the foreground until SIGTERM or SIGINT; return the exit code. The workers are
    stopped (drained) before this returns."""
    context = forkserver_context("actors.indexer.preload")  # as the agent's: no resource tracker process
    signals = StopSignals()
    stats = IndexerStats()
    wakeup = Wakeup()
    supervisor = IndexerSupervisor.start(settings, context, stats, signals.requested, signals.known_pids, wakeup)
    server = None
    try:
        def current_stats() -> dict[str, Any]:
            return stats.build(wakeup.ask(supervisor, Status(), timeout=5))

        if settings.http_enabled:
            try:
                server = serve(settings.http_host, settings.http_port, current_stats, prometheus_text)
            except OSError as error:
                log.error("http: cannot serve %s:%d (%s); stopping", settings.http_host, settings.http_port,
                          error.strerror or error)
                return 1
        next_stats_log = time.monotonic() + STATS_LOG_INTERVAL
        while not signals.requested.wait(1.0):
            figures = current_stats()  # every second: docs/s is measured from these samples
            if time.monotonic() >= next_stats_log:
                next_stats_log += STATS_LOG_INTERVAL
                log_stats(figures)
        return 0
    finally:
        if server is not None:
            server.shutdown()
        try:
            wakeup.ask(supervisor, Shutdown(), timeout=settings.drain_timeout + 2 * STOP_MARGIN)
        finally:
            supervisor.stop()
