"""The producer: moves spooled events to the output and acknowledges them, in exactly one place."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka

from actors.outputs import Output, OutputError
from actors.spool import SpoolReader

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


class ProducerActor(pykka.ThreadingActor):
    """Owns the output and one spool reader per dataset; delivers batches round-robin across datasets."""

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
        self._discover_spools()
        delivered_any = False
        for dataset, reader in self.readers.items():
            records = reader.read(max_records=self.bulk_max_size, max_bytes=self.batch_max_bytes)
            if not records:
                continue
            try:
                self.output.publish([record.payload for record in records])
            except OutputError as error:
                reader.rewind()
                if not self.stats.oldest_unacknowledged:
                    self.stats.oldest_unacknowledged = event_time(records[0].payload)
                return self._output_failed(error, reader)
            # The one place an event is acknowledged: the output has durably taken it.
            reader.acknowledge(records[-1].position)
            self.stats.acknowledged[dataset] = self.stats.acknowledged.get(dataset, 0) + len(records)
            delivered_any = True
        if delivered_any and self._backoff:
            log.info("output recovered; delivering spooled events again")
            self._backoff = 0.0
        if delivered_any:
            self.stats.oldest_unacknowledged = 0.0
        self.stats.truncated = getattr(self.output, "truncated", 0)
        self.stats.pending_bytes = sum(r.pending_bytes() for r in self.readers.values())
        return PumpResult(more=delivered_any)

    def _output_failed(self, error: OutputError, reader: SpoolReader) -> PumpResult:
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

    def on_stop(self) -> None:
        self.output.close()
