"""The producer: moves spooled events to the output and acknowledges them, in exactly one place."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, cast

import pykka

from actors.outputs import Output, OutputError
from actors.spool import SpooledRecord, SpoolReader

log = logging.getLogger("hostaudit.producer")

OUTAGE_LOG_INTERVAL = 60.0


@dataclass
class DeliveryStats:
    """Counters of one producer run (per dataset where it matters), sent to the supervisor in heartbeats."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    failed_batches: int = 0
    truncated: int = 0
    pending_bytes: int = 0
    oldest_unacknowledged: float = 0.0  # epoch seconds of the oldest event not yet acknowledged; 0 = none
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        age = max(0.0, time.time() - self.oldest_unacknowledged) if self.oldest_unacknowledged else 0.0
        return {"acknowledged": dict(self.acknowledged), "failed_batches": self.failed_batches,
                "truncated": self.truncated, "spool_pending_bytes": self.pending_bytes,
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
    retry_after: float = 0.0  # the output failed: wait this long before pumping again


class PipelinedOutput(Output, Protocol):
    """An output that can take the next batch while the broker confirms the previous one (Kafka)."""

    def submit(self, batch: Sequence[bytes]) -> Any: ...

    def wait(self, submitted: Any) -> None: ...


@dataclass
class _Batch:
    """A batch handed to the output and not yet acknowledged."""

    dataset: str
    reader: SpoolReader
    records: list[SpooledRecord]
    submitted: Any  # what the output's submit returned; None once published synchronously


class ProducerActor(pykka.ThreadingActor):
    """Owns the output and one spool reader per dataset; delivers batches round-robin across datasets.

    With an output that can `submit` (Kafka), one batch stays in flight while the next is read from the spool
    and handed over; a batch is acknowledged only once the output confirmed it, oldest first.
    """

    MAX_IN_FLIGHT = 1  # batches submitted and not yet confirmed while the next one is prepared

    def __init__(self, spool_root: Path, output: Output, bulk_max_size: int = 2048,
                 batch_max_bytes: int = 8 * 1024 * 1024, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, stats: DeliveryStats | None = None) -> None:
        super().__init__()
        self.spool_root = spool_root
        self.output = output
        self.bulk_max_size = bulk_max_size
        self.batch_max_bytes = batch_max_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.readers: dict[str, SpoolReader] = {}
        self.stats = stats if stats is not None else DeliveryStats()
        self._backoff = 0.0
        self._last_outage_log = 0.0
        self._pipelined = callable(getattr(output, "submit", None)) and callable(getattr(output, "wait", None))
        self._in_flight: deque[_Batch] = deque()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Pump):
            return self.pump()
        return None

    def _discover_spools(self) -> None:
        if not self.spool_root.is_dir():
            return
        for entry in self.spool_root.iterdir():
            if entry.is_dir() and entry.name not in self.readers:
                self.readers[entry.name] = SpoolReader(entry)

    def pump(self) -> PumpResult:
        """Read and hand over one batch per dataset; acknowledge the batches the output confirmed. Returns
        more=True while anything was delivered or is still in flight (pump again at once)."""
        self._discover_spools()
        delivered_any = False
        submitted_any = False
        try:
            for dataset, reader in self.readers.items():
                records = reader.read(max_records=self.bulk_max_size, max_bytes=self.batch_max_bytes)
                if not records:
                    continue
                self._in_flight.append(_Batch(dataset, reader, records, None))
                self._submit(self._in_flight[-1])
                submitted_any = True
                while len(self._in_flight) > (self.MAX_IN_FLIGHT if self._pipelined else 0):
                    self._settle(self._in_flight[0])
                    delivered_any = True
            if not submitted_any:  # nothing new to send: wait for what is in flight
                while self._in_flight:
                    self._settle(self._in_flight[0])
                    delivered_any = True
        except OutputError as error:
            return self._output_failed(error)
        if delivered_any and self._backoff:
            log.info("output recovered; delivering spooled events again")
            self._backoff = 0.0
        if delivered_any:
            self.stats.oldest_unacknowledged = 0.0
        self.stats.truncated = getattr(self.output, "truncated", 0)
        self.stats.pending_bytes = sum(r.pending_bytes() for r in self.readers.values())
        return PumpResult(more=delivered_any or bool(self._in_flight))

    def _submit(self, batch: _Batch) -> None:
        payloads = [record.payload for record in batch.records]
        if self._pipelined:
            batch.submitted = cast(PipelinedOutput, self.output).submit(payloads)
        else:
            self.output.publish(payloads)

    def _settle(self, batch: _Batch) -> None:
        """Wait until the output confirmed the oldest batch in flight, then acknowledge it."""
        assert batch is self._in_flight[0]
        if batch.submitted is not None:
            cast(PipelinedOutput, self.output).wait(batch.submitted)
        # The one place an event is acknowledged: the output has durably taken it.
        batch.reader.acknowledge(batch.records[-1].position)
        self._in_flight.popleft()
        self.stats.acknowledged[batch.dataset] = self.stats.acknowledged.get(batch.dataset, 0) + len(batch.records)

    def _output_failed(self, error: OutputError) -> PumpResult:
        """The output failed (and dropped what it held): every unacknowledged batch is read again later."""
        if self._in_flight and not self.stats.oldest_unacknowledged:
            self.stats.oldest_unacknowledged = event_time(self._in_flight[0].records[0].payload)
        for batch in self._in_flight:
            batch.reader.rewind()
        self._in_flight.clear()
        self.stats.failed_batches += 1
        self.stats.last_error = str(error)
        self._backoff = min(self.backoff_max, self._backoff * 2 if self._backoff else self.backoff_initial)
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_INTERVAL:
            self._last_outage_log = now
            pending = self.stats.pending_bytes = sum(r.pending_bytes() for r in self.readers.values())
            log.warning("output unavailable (%s); %d bytes spooled, retrying in %.1f s", error, pending,
                        self._backoff)
        return PumpResult(more=False, retry_after=self._backoff)

    def pending(self) -> bool:
        self._discover_spools()
        return any(reader.has_pending() for reader in self.readers.values())

    def on_stop(self) -> None:
        try:
            while self._in_flight:
                self._settle(self._in_flight[0])
        except OutputError as error:
            log.info("stopping with a batch unconfirmed (%s); it stays spooled and is sent again", error)
        finally:
            self.output.close()
