"""One indexer worker process: a consumer actor and a bulk-writer actor, its heartbeats to the supervisor, and
its stop (SIGTERM: finish what was read, commit, leave the group)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pykka

from actors.indexer.settings import IndexerSettings
from actors.runtime.logs import configure_logging
from actors.runtime.worker import exit_loudly_on_error, Lifecycle, start_heartbeats, set_role

log = logging.getLogger("hostaudit.indexer.worker")

STOP_TIMEOUT = 5.0  # seconds for each actor to stop once the drain is over
ABANDON_WAIT = 5.0  # seconds to close the consumer (leave the group) once the drain time is over


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, picklable across the forkserver."""

    number: int
    settings: IndexerSettings

    @property
    def name(self) -> str:
        return f"worker-{self.number}"


def worker_main(spec: WorkerSpec, heartbeat: Connection) -> None:
    """Run one worker until SIGTERM; any error exits non-zero for the supervisor to restart it."""
    exit_loudly_on_error(_worker_main, spec, heartbeat, role=f"indexer {spec.name}")


def _worker_main(spec: WorkerSpec, heartbeat: Connection) -> None:
    from actors.indexer.bulk import BulkClient
    from actors.indexer.consumer import ConsumerActor, ConsumerStats, Drain
    from actors.indexer.dead_letter import DeadLetters
    from actors.indexer.documents import DocumentReader
    from actors.indexer.writer import BulkWriter, BulkWriterActor, WriterStats

    settings = spec.settings
    engine, kafka = settings.engine, settings.kafka
    set_role(f"indexer {spec.name}")
    lifecycle = Lifecycle()
    configure_logging(settings.logging_level, f"indexer {spec.name}")

    def crashed(error: BaseException) -> None:
        logging.shutdown()
        os._exit(1)  # the supervisor sees the exit code and restarts this worker

    abandon = threading.Event()
    writer_stats, consumer_stats = WriterStats(), ConsumerStats()
    dead_letters = DeadLetters({**kafka.client, "client_id": f"{kafka.client['client_id']}-{spec.number}-dlq"},
                               kafka.dead_letter_topic)
    writer = BulkWriterActor.start(
        BulkWriter(BulkClient(engine), dead_letters, engine.bulk_max_bytes, engine.backoff_init, engine.backoff_max,
                   abandon, writer_stats), crashed)
    consumer = ConsumerActor.start(kafka, f"{kafka.client['client_id']}-{spec.number}", DocumentReader(engine.index),
                                   writer, engine.bulk_max_size, engine.bulk_max_bytes, consumer_stats, crashed)

    def figures() -> dict[str, Any]:
        return {**writer_stats.as_dict(), **consumer_stats.as_dict()}

    start_heartbeats(heartbeat, figures, lifecycle)
    while not lifecycle.stopping.wait(0.5):
        if not (consumer.is_alive() and writer.is_alive()):
            raise RuntimeError("an actor of the worker stopped by itself")
    done: pykka.ThreadingFuture = pykka.ThreadingFuture()
    consumer.tell(Drain(done))
    try:
        finished = done.get(timeout=settings.drain_timeout)
    except pykka.Timeout:
        log.warning("the batches read were not all indexed within indexer.drain_timeout (%.0f s): their "
                    "offsets are not committed, and the partitions' next owner reads them again",
                    settings.drain_timeout)
        abandon.set()
        try:
            finished = done.get(timeout=ABANDON_WAIT)
        except pykka.Timeout:
            finished = False
    for actor in (consumer, writer):
        try:
            actor.stop(timeout=STOP_TIMEOUT)
        except pykka.Timeout:
            log.warning("an actor did not stop in %.0f s; exiting anyway", STOP_TIMEOUT)
            logging.shutdown()
            os._exit(1)
    log.info("stopped%s", " after indexing and committing everything read" if finished else "")
    sys.exit(0)
