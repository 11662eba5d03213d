"""The root supervisor actor: starts one OS process per dataset plus the producer, watches, restarts."""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any

from actors.runtime.agent import AgentIdentity
from actors.config import Settings
from actors.outputs.routing import routing_fields
from actors.runtime.doorbell import doorbell_name
from actors.runtime.monitoring import build_stats, log_stats, serve
from actors.runtime.worker import CollectorSpec, ProducerSpec, collector_main, producer_main
from actors.runtime.supervision import Child, ProcessSupervisor, Shutdown, Status, StopSignals, forkserver_context

log = logging.getLogger("hostaudit.supervisor")

PRODUCER = "producer"
PRODUCER_HANG_TIMEOUT = 120.0
COLLECTOR_STOP_SECONDS = 3.0
PRODUCER_STOP_SECONDS = 6.0
STATS_LOG_INTERVAL = 30.0


class SupervisorActor(ProcessSupervisor):
    """The agent's root actor: one process per dataset's collector, and the producer (stopped last, so it
    flushes what the collectors spooled)."""

    others = "the other datasets"

    def __init__(self, settings: Settings, context: BaseContext, agent: AgentIdentity,
                 stop_requested: threading.Event | None = None) -> None:
        super().__init__(settings.supervisor, context, stop_requested)
        self.settings = settings
        doorbell = doorbell_name(settings.path_data)
        producer_spec = ProducerSpec(settings.path_data, settings.output.type, dict(settings.output.options),
                                     settings.logging_level, doorbell)
        self.children[PRODUCER] = Child(PRODUCER, producer_main, producer_spec,
                                        settings.supervisor.hang_timeout or PRODUCER_HANG_TIMEOUT)
        routing = routing_fields(settings.output.type, settings.output.options)  # once, for every collector
        for name, dataset in settings.datasets.items():
            spec = CollectorSpec(
                dataset=name, period=dataset.period, state_period=dataset.state_period,
                options=dict(dataset.options), hostfs=settings.hostfs, path_data=settings.path_data,
                agent=agent, spool_max_bytes=settings.queue_disk_max_size,
                hang_file=settings.debug_hang_file, log_level=settings.logging_level, doorbell=doorbell,
                routing_fields=routing,
            )
            self.children[name] = Child(name, collector_main, spec, settings.hang_timeout_for(name))

    # --- stopping --------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self._cancel_timers()
        collectors = [c for c in self.children.values() if c.name != PRODUCER and c.alive]
        self._stop_all(collectors, COLLECTOR_STOP_SECONDS)
        producer = self.children[PRODUCER]
        if producer.alive:
            self._stop_all([producer], PRODUCER_STOP_SECONDS)
        log.info("all processes stopped")


def run(settings: Settings, agent: AgentIdentity) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT; return the exit code.

    Whatever happens here, the children are stopped before this returns: no collector is left running
    without its supervisor (a failed HTTP bind exits 1 with one line, after stopping them).
    """
    context = forkserver_context("actors.runtime.preload")
    signals = StopSignals()
    stop_requested, known_pids = signals.requested, signals.known_pids
    supervisor = SupervisorActor.start(settings, context, agent, stop_requested)
    server = None
    try:
        def current_stats() -> dict[str, Any]:
            return build_stats(supervisor.ask(Status(), timeout=5), settings.path_data / "spool")

        if settings.http_enabled:
            try:
                server = serve(settings.http_host, settings.http_port, current_stats)
            except OSError as error:
                log.error("http: cannot serve %s:%d (%s); stopping", settings.http_host, settings.http_port,
                          error.strerror or error)
                return 1
        next_stats_log = time.monotonic() + STATS_LOG_INTERVAL
        while not stop_requested.wait(1.0):
            known_pids[:] = supervisor.proxy().child_pids().get(timeout=5)
            if time.monotonic() >= next_stats_log:
                next_stats_log += STATS_LOG_INTERVAL
                log_stats(current_stats())
        return 0
    finally:
        if server is not None:
            server.shutdown()
        try:
            known_pids[:] = supervisor.proxy().child_pids().get(timeout=5)
            supervisor.ask(Shutdown(), timeout=15)
        finally:
            supervisor.stop()
