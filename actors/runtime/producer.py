"""The producer: moves spooled events to the output and acknowledges them, in exactly one place."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pykka

from actors.outputs import Output, OutputError, Rejection
from actors.runtime.spool import CORRUPT_DIR, SpoolReader, SpooledRecord

log = logging.getLogger("hostaudit.producer")

OUTAGE_LOG_INTERVAL = 60.0
CURSOR_LOG_INTERVAL = 60.0
DEAD_LETTER_DIR = "dead-letter"


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
    """The `@timestamp` of an encoded event as epoch seconds (now if it cannot be read)."""
    try:
        stamp = json.loads(payload)["@timestamp"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        return time.time()


@dataclass(frozen=True)
class Pump:
    """Message: deliver what is spooled, one batch per dataset; the reply says if more is waiting."""


@dataclass(frozen=True)
class PumpResult:
    more: bool  # a batch was delivered and more may be waiting: pump again at once
    retry_after: float = 0.0  # some dataset's batch failed: the first one is due again in this many seconds


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


class ProducerActor(pykka.ThreadingActor):
    """Owns the output and one spool reader per dataset; delivers batches round-robin across datasets.

    A dataset whose batch fails is held back with its own exponential backoff while the others keep going;
    an event the output refuses for good goes to the dead-letter file and never blocks the events after it.
    """

    def __init__(self, path_data: Path, output: Output, bulk_max_size: int = 2048,
                 batch_max_bytes: int = 8 * 1024 * 1024, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, stats: DeliveryStats | None = None) -> None:
        super().__init__()
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
        self.stats = stats if stats is not None else DeliveryStats()
        self._last_outage_log = 0.0
        self._last_cursor_log = 0.0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Pump):
            return self.pump()
        return None

    def _discover_spools(self) -> None:
        if not self.spool_root.is_dir():
            return
        for entry in self.spool_root.iterdir():
            if entry.is_dir() and entry.name not in self.readers:
                self.readers[entry.name] = SpoolReader(entry, corrupt_dir=self.corrupt_dir)
                self.backoffs[entry.name] = _Backoff()

    def pump(self) -> PumpResult:
        self._discover_spools()
        delivered_any = False
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
        self.stats.truncated = getattr(self.output, "truncated", 0)
        self.stats.pending_bytes = sum(r.pending_bytes() for r in self.readers.values())
        if not any(b.delay for b in self.backoffs.values()):
            self.stats.oldest_unacknowledged = 0.0
        self._report_cursor_errors()
        waits = [b.due - time.monotonic() for b in self.backoffs.values() if b.delay]
        return PumpResult(more=delivered_any, retry_after=max(0.01, min(waits)) if waits else 0.0)

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

    def on_stop(self) -> None:
        self.output.close()
