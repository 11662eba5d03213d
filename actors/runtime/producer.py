"""The producer: moves spooled events to the output and acknowledges them, in exactly one place."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pykka

from actors.outputs import Output, OutputError, Rejection
from actors.runtime.doorbell import Doorbell
from actors.runtime.spool import CORRUPT_DIR, SpoolReader, SpooledRecord

log = logging.getLogger("hostaudit.producer")

OUTAGE_LOG_INTERVAL = 60.0
CURSOR_LOG_INTERVAL = 60.0
DEAD_LETTER_DIR = "dead-letter"
IDLE_POLL_SECONDS = 5.0  # the producer re-reads the spools at least this often, rung or not


@dataclass
class DeliveryStats:
    """Counters of one producer run (per dataset where it matters), sent to the supervisor in heartbeats."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    failed_batches: int = 0
    truncated: int = 0
    pending_bytes: int = 0
    oldest_unacknowledged: float = 0.0  # epoch seconds of the oldest event not yet acknowledged; 0 = none
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        age = max(0.0, time.time() - self.oldest_unacknowledged) if self.oldest_unacknowledged else 0.0
        return {"acknowledged": dict(self.acknowledged), "dead_lettered": dict(self.dead_lettered),
                "failed_batches": self.failed_batches, "truncated": self.truncated,
                "spool_pending_bytes": self.pending_bytes,
                "oldest_unacknowledged_age_seconds": round(age, 3), "last_error": self.last_error}


def event_time(payload: bytes) -> float:
    """The `@timestamp` of an encoded event as epoch seconds (now if it cannot be read). Parses the event: only
    for the first event of a failed batch (the age of the oldest unacknowledged event), never per event."""
    try:
        stamp = json.loads(payload)["@timestamp"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        return time.time()


@dataclass(frozen=True)
class PumpResult:
    """What one pass over the spools did."""

    more: bool  # a batch was delivered
    retry_after: float = 0.0  # some dataset's batch failed: the first one is due again in this many seconds
    backlog: bool = False  # a batch was full: more may be waiting, pump again at once (else the doorbell rings)


class DeadLetters:
    """Events the output refused for good (a routing field missing, a topic the broker rejects), kept as
    NDJSON under `<path.data>/dead-letter/<dataset>.ndjson`, one `{"reason", "failed_at", "event"}` a line."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def keep(self, dataset: str, records: Sequence[SpooledRecord], rejections: Sequence[Rejection]) -> None:
        """Append the rejected records durably (fsynced); OSError if they could not be kept."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines = []
        for index, reason in rejections:
            head = json.dumps({"reason": reason, "failed_at": now, "sequence": records[index].sequence})
            lines.append(head[:-1].encode() + b',"event":' + records[index].payload + b"}\n")
        fd = os.open(self.directory / f"{dataset}.ndjson", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _Backoff:
    """One dataset's retry schedule after its batch failed (datasets fail and recover independently)."""

    delay: float = 0.0
    due: float = 0.0  # monotonic time before which this dataset is not pumped


class Delivery:
    """Owns the output and one spool reader per dataset; each `pump()` delivers one batch per dataset, round-robin.

    A dataset whose batch fails is held back with its own exponential backoff while the others keep going;
    an event the output refuses for good goes to the dead-letter file and never blocks the events after it.
    A plain class with no thread of its own: the ProducerActor runs it (and tests drive it directly).
    """

    def __init__(self, path_data: Path, output: Output, bulk_max_size: int = 2048,
                 batch_max_bytes: int = 8 * 1024 * 1024, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0) -> None:
        self.spool_root = path_data / "spool"
        self.corrupt_dir = path_data / CORRUPT_DIR
        self.dead_letters = DeadLetters(path_data / DEAD_LETTER_DIR)
        self.output = output
        self.bulk_max_size = bulk_max_size
        self.batch_max_bytes = batch_max_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.readers: dict[str, SpoolReader] = {}
        self.backoffs: dict[str, _Backoff] = {}
        self.stats = DeliveryStats()
        self._last_outage_log = 0.0
        self._last_cursor_log = 0.0

    def _discover_spools(self) -> None:
        if not self.spool_root.is_dir():
            return
        for entry in self.spool_root.iterdir():
            if entry.is_dir() and entry.name not in self.readers:
                self.readers[entry.name] = SpoolReader(entry, corrupt_dir=self.corrupt_dir)
                self.backoffs[entry.name] = _Backoff()

    def pump(self) -> PumpResult:
        self._discover_spools()
        delivered_any = backlog = False
        now = time.monotonic()
        for dataset, reader in self.readers.items():
            backoff = self.backoffs[dataset]
            if backoff.due > now:
                continue
            records = reader.read(max_records=self.bulk_max_size, max_bytes=self.batch_max_bytes)
            if not records:
                continue
            if self._deliver(dataset, reader, records):
                delivered_any = True
                backlog = backlog or self._may_be_more(records)
        self.stats.truncated = getattr(self.output, "truncated", 0)
        if not any(b.delay for b in self.backoffs.values()):
            self.stats.oldest_unacknowledged = 0.0
        self._report_cursor_errors()
        waits = [b.due - time.monotonic() for b in self.backoffs.values() if b.delay]
        return PumpResult(more=delivered_any, retry_after=max(0.01, min(waits)) if waits else 0.0, backlog=backlog)

    def _may_be_more(self, records: Sequence[SpooledRecord]) -> bool:
        """Whether a delivered batch may have left records behind: it reached the record limit, or half the byte
        limit (the reader stops before a record that would pass it). A smaller batch took everything complete:
        what is appended later rings the doorbell (drained before this pump read), so no empty pump follows."""
        return (len(records) >= self.bulk_max_size
                or sum(len(record.payload) for record in records) >= self.batch_max_bytes // 2)

    def figures(self) -> dict[str, Any]:
        """The delivery figures, with the spools' pending bytes measured now (it lists every spool directory:
        done when a heartbeat asks, not at every pump)."""
        self.stats.pending_bytes = sum(reader.pending_bytes() for reader in self.readers.values())
        return self.stats.as_dict()

    def drain(self, timeout: float) -> None:
        """Deliver what is spooled for up to `timeout` seconds; stop early once nothing is left or a batch fails
        (the output is down: the rest stays spooled for the next run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.pump()
            if result.retry_after or not result.more:
                return

    def _deliver(self, dataset: str, reader: SpoolReader, records: list[SpooledRecord]) -> bool:
        """Publish one dataset's batch; acknowledge it when the output took it. False if it must be retried."""
        try:
            rejections = self.output.publish(records)
            if rejections:
                self.dead_letters.keep(dataset, records, rejections)
        except (OutputError, OSError) as error:
            reader.rewind()
            if not self.stats.oldest_unacknowledged:
                self.stats.oldest_unacknowledged = event_time(records[0].payload)
            self._failed(dataset, error)
            return False
        if rejections:
            self.stats.dead_lettered[dataset] = self.stats.dead_lettered.get(dataset, 0) + len(rejections)
            log.error("%d %s event(s) refused by the output for good (first: %s); kept in %s", len(rejections),
                      dataset, rejections[0][1], self.dead_letters.directory / f"{dataset}.ndjson")
        # The one place an event is acknowledged: the output (or the dead-letter file) has durably taken it.
        reader.acknowledge(records[-1].position)
        self.stats.acknowledged[dataset] = self.stats.acknowledged.get(dataset, 0) + len(records) - len(rejections)
        backoff = self.backoffs[dataset]
        if backoff.delay:
            log.info("output recovered for %s; delivering its spooled events again", dataset)
            backoff.delay = backoff.due = 0.0
        return True

    def _failed(self, dataset: str, error: Exception) -> None:
        self.stats.failed_batches += 1
        self.stats.last_error = str(error)
        backoff = self.backoffs[dataset]
        backoff.delay = min(self.backoff_max, backoff.delay * 2 if backoff.delay else self.backoff_initial)
        backoff.due = time.monotonic() + backoff.delay
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_INTERVAL:
            self._last_outage_log = now
            pending = self.stats.pending_bytes = sum(r.pending_bytes() for r in self.readers.values())
            log.warning("output unavailable for %s (%s); %d bytes spooled, retrying in %.1f s", dataset, error,
                        pending, backoff.delay)

    def _report_cursor_errors(self) -> None:
        """One warning a minute while acknowledgements cannot be written (disk full): kept in memory."""
        errors = {name: reader.cursor_error for name, reader in self.readers.items() if reader.cursor_error}
        now = time.monotonic()
        if errors and now - self._last_cursor_log >= CURSOR_LOG_INTERVAL:
            self._last_cursor_log = now
            log.warning("cannot record acknowledgements on disk for %s (%s); kept in memory, retried at every "
                        "batch (a restart before then re-sends those events)", ", ".join(errors),
                        next(iter(errors.values())))

    def close(self) -> None:
        """Close the output and release the spools."""
        try:
            self.output.close()
        finally:
            for reader in self.readers.values():
                reader.close()


@dataclass(frozen=True)
class Pump:
    """Message, from the actor to itself: deliver one batch per dataset, then schedule the next pump."""


@dataclass(frozen=True)
class Stats:
    """Message: answer the delivery figures for a heartbeat, with `progress` (pumps done so far)."""


@dataclass(frozen=True)
class Drain:
    """Message: stop pumping; deliver what is left for up to `timeout` seconds (see Delivery.drain). Answered
    when done; the caller then stops the actor (which closes the output)."""

    timeout: float


class _Waker(threading.Thread):
    """Waits, outside the actor, until the doorbell rings or a timeout passes, then tells the actor to pump: the
    wait never blocks the actor's mailbox. Armed by the actor after each pump that found nothing to do, so exactly
    one pump is pending at any time (a Pump message, a pump running, or this wait) and the doorbell socket is
    used by one thread at a time. If the thread itself fails, `on_crash` is called (the process must not live
    on without pumping)."""

    def __init__(self, actor_ref: pykka.ActorRef[Any], doorbell: Doorbell | None,
                 on_crash: Callable[[BaseException], None]) -> None:
        super().__init__(name="producer-waker", daemon=True)
        self.actor_ref, self.doorbell, self.on_crash = actor_ref, doorbell, on_crash
        self._requests: queue.SimpleQueue[float | None] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def wake_after(self, timeout: float) -> None:
        """Tell the actor to pump when the doorbell rings, or after `timeout` seconds at the latest."""
        self._requests.put(timeout)

    def stop(self) -> None:
        self._stopped.set()
        self._requests.put(None)

    def run(self) -> None:
        try:
            while True:
                timeout = self._requests.get()
                if timeout is None or self._stopped.is_set():
                    return
                if self.doorbell is not None:
                    self.doorbell.wait(timeout)
                else:
                    self._stopped.wait(timeout)
                if self._stopped.is_set():
                    return
                self.actor_ref.tell(Pump())
        except pykka.ActorDeadError:
            return  # the actor stopped while this waited
        except BaseException as error:  # noqa: BLE001 - a waker that dies must not go unnoticed
            log.exception("producer wake-up thread failed")
            self.on_crash(error)


class ProducerActor(pykka.ThreadingActor):
    """Runs a Delivery: pumps it on its own schedule, answers Stats, drains on Drain. Its mailbox is the only
    way in.

    On start it tells itself to pump; after each pump it tells itself again at once when a full batch was
    delivered (more may be waiting), else it arms the waker: the next pump comes when a collector rings the doorbell, when
    a dataset held back by a failure is due, or after `poll_interval` seconds at the latest. A pump that raises
    (a bug) calls `on_crash` and stops the actor: the process must exit for the supervisor to restart it.
    """

    def __init__(self, delivery: Delivery, doorbell: Doorbell | None = None,
                 poll_interval: float = IDLE_POLL_SECONDS,
                 on_crash: Callable[[BaseException], None] = lambda error: None) -> None:
        super().__init__()
        self.delivery = delivery
        self.doorbell = doorbell
        self.poll_interval = poll_interval
        self.on_crash = on_crash
        self.pumps = 0  # progress: the supervisor sees a hang when this stops moving
        self.draining = False
        self._waker = _Waker(self.actor_ref, doorbell, on_crash)

    def on_start(self) -> None:
        self._waker.start()
        self.actor_ref.tell(Pump())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Pump):
            self._pump()
        elif isinstance(message, Stats):
            return {"progress": self.pumps, **self.delivery.figures()}
        elif isinstance(message, Drain):
            self.draining = True
            self.delivery.drain(message.timeout)
        return None

    def _pump(self) -> None:
        if self.draining:
            return  # a wake-up that arrived after Drain: the drain delivered what was left
        self.pumps += 1
        try:
            if self.doorbell is not None:
                self.doorbell.drain()  # before reading, so an append after this moment wakes the next wait
            result = self.delivery.pump()
        except Exception as error:  # a bug: the process exits and the supervisor restarts it
            log.exception("delivering spooled events failed")
            self.on_crash(error)
            self.stop()
            return
        if result.backlog:
            self.actor_ref.tell(Pump())
        else:  # all read: until rung, or until the first dataset held back by a failure is due
            self._waker.wake_after(min(self.poll_interval, result.retry_after or self.poll_interval))

    def on_stop(self) -> None:
        self._waker.stop()
        self.delivery.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """An exception escaped a message (pykka logged it and stops the actor): the process must exit."""
        self._waker.stop()
        self.on_crash(exception_value)
