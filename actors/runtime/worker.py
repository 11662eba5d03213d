"""Child-process entry points: a collector or the producer, its role in ps/top, signals and heartbeats."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pykka
import setproctitle

from actors.runtime.logs import configure_logging

if TYPE_CHECKING:  # the supervisor imports this module for run_pickled only: it stays without the event code
    from actors.runtime.agent import AgentIdentity
    from actors.datasets import CheckedOptions

log = logging.getLogger("hostaudit.worker")

HEARTBEAT_INTERVAL = 1.0  # the indexer's workers (its /stats samples docs/s every second)
STOP_TIMEOUT = 4.0
STATS_ASK_TIMEOUT = 1.0  # a heartbeat waits this long for the producer's figures, then repeats the last ones


def heartbeat_interval(hang_timeout: float) -> float:
    """A quarter of the child's hang timeout (a hang is seen at most that late), within 0.25-5 s: an idle agent
    (hang timeouts of 30 s and more) sends each child's figures every 5 s."""
    return min(5.0, max(0.25, hang_timeout / 4))


def segment_size_for(spool_max_bytes: int) -> int:
    """Spool segment size: small enough that acknowledged segments are reclaimed well before
    `queue.disk.max_size` is reached (a sixteenth of it), between 64 KiB and 64 MiB."""
    return max(64 * 1024, min(64 * 1024 * 1024, spool_max_bytes // 16))


def set_role(role: str) -> None:
    """Show `hostaudit: <role>` in ps and top."""
    setproctitle.setproctitle(f"hostaudit: {role}")


@dataclass(frozen=True)
class CollectorSpec:
    """Everything a collector process needs, picklable across the forkserver."""

    dataset: str
    period: float
    state_period: float
    options: Mapping[str, Any] | CheckedOptions  # checked by the command line (plan), or raw (tests)
    hostfs: Path
    path_data: Path
    agent: AgentIdentity
    spool_max_bytes: int
    hang_file: str
    log_level: str
    doorbell: str
    routing_fields: frozenset[str] = frozenset()  # recorded beside each spooled event (the output routes by them)
    hang_timeout: float = 120.0  # the supervisor's, for this dataset: sets the heartbeat interval


@dataclass(frozen=True)
class ProducerSpec:
    """Everything the producer process needs."""

    path_data: Path
    output_type: str
    output_options: Mapping[str, Any]
    log_level: str
    doorbell: str
    drain_timeout: float = 5.0
    hang_timeout: float = 120.0  # the supervisor's: an idle producer pumps (its progress) several times within it


class Lifecycle:
    """SIGTERM asks the process to stop; SIGINT is the supervisor's business, not a child's."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stopping.set())


def _heartbeat_until_stopped(conn: Connection, stats: Callable[[], dict[str, Any]], lifecycle: Lifecycle,
                             check: Callable[[], None] = lambda: None, interval: float = HEARTBEAT_INTERVAL) -> None:
    """From the main thread (no thread of its own): send `stats()` (with the progress counter) to the supervisor
    every `interval` seconds until SIGTERM or the supervisor is gone. `check` runs before each beat and raises to
    end the process."""
    while True:
        check()
        try:
            beat = stats()
        except Exception:  # noqa: BLE001 - a broken figure must not end the heartbeats (a false hang)
            log.exception("heartbeat figures could not be read; sending progress only")
            beat = {}
        try:
            conn.send(beat)
        except (OSError, EOFError):
            log.warning("supervisor is gone; stopping")
            lifecycle.stopping.set()
            return
        if lifecycle.stopping.wait(interval):
            return


def start_heartbeats(conn: Connection, stats: Callable[[], dict[str, Any]], lifecycle: Lifecycle) -> None:
    """The same heartbeats from a thread of their own, for a process whose main thread has other work (the
    indexer's workers watch their actors)."""
    threading.Thread(target=_heartbeat_until_stopped, args=(conn, stats, lifecycle), name="heartbeat",
                     daemon=True).start()


def run_pickled(spec: tuple[str, bytes], heartbeat: Connection) -> None:
    """A child's entry point: ("collector" or "producer", its pickled spec). The supervisor passes the spec through
    unread, so it never imports what the spec names (a secret's class, the configuration's containers)."""
    kind, data = spec
    main = producer_main if kind == "producer" else collector_main
    main(pickle.loads(data), heartbeat)


def collector_main(spec: CollectorSpec, heartbeat: Connection) -> None:
    """Run one dataset's collector actor until SIGTERM; any error exits non-zero for the supervisor to see."""
    exit_loudly_on_error(_collector_main, spec, heartbeat, role=spec.dataset)


def exit_loudly_on_error(main: Callable[..., None], *args: Any, role: str) -> None:
    """Run `main`; an exception that escapes it is logged and the process exits 1 at once (no live but idle
    process left behind: the supervisor restarts it)."""
    try:
        main(*args)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything at all: the supervisor must see this process die
        log.exception("%s: unexpected error; exiting for the supervisor to restart it", role)
        logging.shutdown()
        os._exit(1)


def _collector_main(spec: CollectorSpec, heartbeat: Connection) -> None:
    from actors.runtime.agent import common_fields, load_digest_key
    from actors.runtime.collector import CollectorActor, DatasetRunner, Progress, finish_stream, pump_stream
    from actors.runtime.doorbell import Bell
    from actors.datasets import DatasetContext, load_dataset
    from actors.hostfs.host_facts import describe_host
    from actors.runtime.spool import CORRUPT_DIR, SpoolWriter
    from actors.runtime.state import StateStore

    set_role(spec.dataset)
    lifecycle = Lifecycle()
    configure_logging(spec.log_level, spec.dataset)
    host = describe_host(spec.hostfs)
    context = DatasetContext(hostfs=spec.hostfs, options=spec.options, host_id=host.get("id", ""),
                             digest_key=load_digest_key(spec.path_data))
    spool_root = spec.path_data / "spool"
    dataset = load_dataset(spec.dataset, context)
    # Subscribe before the first poll, so nothing falls between the poll and the subscription.
    stream = dataset.open_stream() if hasattr(dataset, "open_stream") else None
    runner = DatasetRunner(
        dataset=dataset,
        state_period=spec.state_period,
        store=StateStore(spec.path_data / "state.db"),
        spool=SpoolWriter(spool_root / spec.dataset, segment_bytes=segment_size_for(spec.spool_max_bytes),
                          corrupt_dir=spec.path_data / CORRUPT_DIR),
        spool_root=spool_root,
        spool_max_bytes=spec.spool_max_bytes,
        common=_HostFieldsCache(spec.agent, spec.hostfs, describe_host, host, common_fields),
        on_spooled=Bell(spec.doorbell).ring,
        routing_fields=spec.routing_fields,
    )
    progress = Progress()

    def crashed(error: BaseException) -> None:
        os._exit(1)  # the supervisor sees the exit code and restarts this dataset

    actor = CollectorActor.start(runner, spec.period, progress, spec.hang_file, crashed)
    pump = None
    # A stream that holds items of its own (`finish`: the connector's reader) hands them over at a stop, then sets
    # `flushed` for the pump to spool them; one read straight from the kernel's socket holds nothing.
    flushed = threading.Event() if hasattr(stream, "finish") else None
    if stream is not None:
        pump = threading.Thread(target=pump_stream, name="stream", daemon=True,
                                args=(stream, actor, lifecycle.stopping, progress, crashed, flushed))
        pump.start()
    _heartbeat_until_stopped(heartbeat, progress.read, lifecycle, interval=heartbeat_interval(spec.hang_timeout))
    if pump is not None and flushed is not None:
        finish_stream(stream, pump, flushed)  # what the kernel told us before the stop is spooled, not dropped
    try:
        actor.stop(timeout=STOP_TIMEOUT)
    except Exception as error:  # pykka raises its own Timeout; a wedged actor cannot be stopped politely
        log.warning("dataset %s did not stop in %.0f s (%s); exiting anyway", spec.dataset, STOP_TIMEOUT, error)
        os._exit(1)
    if stream is not None:
        stream.close()  # unsubscribe (and reap a reader process, if the stream has one)
    sys.exit(0)


class _HostFieldsCache:
    """The common fields of every event, with `host.*` re-read at most every five minutes."""

    REFRESH_SECONDS = 300.0

    def __init__(self, agent: AgentIdentity, hostfs: Path, describe: Callable[[Path], Mapping[str, Any]],
                 host: Mapping[str, Any],
                 common_fields: Callable[[AgentIdentity, Mapping[str, Any]], Mapping[str, Any]]) -> None:
        self.agent, self.hostfs, self.describe, self.common_fields = agent, hostfs, describe, common_fields
        self.fields = common_fields(agent, host)
        self.read_at = time.monotonic()

    def __call__(self) -> Mapping[str, Any]:
        if time.monotonic() - self.read_at >= self.REFRESH_SECONDS:
            self.fields = self.common_fields(self.agent, self.describe(self.hostfs))
            self.read_at = time.monotonic()
        return self.fields


def producer_main(spec: ProducerSpec, heartbeat: Connection) -> None:
    """Run the producer actor: deliver spooled events to the output until SIGTERM, then drain and exit."""
    exit_loudly_on_error(_producer_main, spec, heartbeat, role="producer")


def _producer_main(spec: ProducerSpec, heartbeat: Connection) -> None:
    from actors.runtime.doorbell import Doorbell
    from actors.outputs import create_output
    from actors.runtime.producer import IDLE_POLL_SECONDS, Delivery, Drain, ProducerActor, Stats

    set_role("producer")
    lifecycle = Lifecycle()
    configure_logging(spec.log_level, "producer")
    output = create_output(spec.output_type, spec.output_options)
    delivery = Delivery(
        spec.path_data, output,
        bulk_max_size=int(spec.output_options.get("bulk_max_size", 2048) or 2048),
        backoff_initial=float(spec.output_options.get("backoff", {}).get("init", 1.0)),
        backoff_max=float(spec.output_options.get("backoff", {}).get("max", 60.0)),
    )

    def crashed(error: BaseException) -> None:
        logging.shutdown()
        os._exit(1)  # the supervisor sees the exit code and restarts the producer

    actor = ProducerActor.start(delivery, Doorbell(spec.doorbell), min(IDLE_POLL_SECONDS, spec.hang_timeout / 4),
                                crashed)
    def check() -> None:
        if not actor.is_alive():
            raise RuntimeError("the producer actor stopped by itself")

    _heartbeat_until_stopped(heartbeat, ActorFigures(actor, Stats()), lifecycle, check,
                             heartbeat_interval(spec.hang_timeout))
    try:
        # Deliver what the stopped collectors spooled last, then stop (the output is closed on stop).
        actor.ask(Drain(spec.drain_timeout), timeout=spec.drain_timeout + STOP_TIMEOUT)
        actor.stop(timeout=STOP_TIMEOUT)
    except pykka.Timeout:  # a batch outlived the drain time (the output is slow or down): it stays spooled
        log.warning("producer did not finish its last batch in %.0f s; exiting (what is not acknowledged stays "
                    "spooled for the next run)", spec.drain_timeout + STOP_TIMEOUT)
        logging.shutdown()
        os._exit(1)
    sys.exit(0)


class ActorFigures:
    """Heartbeat figures asked of an actor (`Stats`, answered from its own thread: nothing is read across
    threads). While it does not answer within `timeout` (busy with a long batch, or hung), the last answer is
    sent again: its progress stands still, which is what the supervisor's hang detection watches."""

    def __init__(self, actor: pykka.ActorRef[Any], message: Any, timeout: float = STATS_ASK_TIMEOUT) -> None:
        self.actor, self.message, self.timeout = actor, message, timeout
        self.last: dict[str, Any] = {"progress": 0}

    def __call__(self) -> dict[str, Any]:
        try:
            self.last = self.actor.ask(self.message, timeout=self.timeout)
        except (pykka.Timeout, pykka.ActorDeadError):
            pass  # busy, hung or stopping: the progress counter does not move
        return self.last
