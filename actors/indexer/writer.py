"""The bulk-writer actor: writes a batch until every document is accepted (201), already there (409) or
definitively refused (400, sent to the dead-letter topic); anything else is retried with backoff, never skipped."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pykka

from actors.indexer.bulk import BAD_DOCUMENT, DUPLICATE, BulkClient, EngineUnavailable, RequestRefused
from actors.indexer.dead_letter import DeadLetters, DeadLetterUnavailable
from actors.indexer.documents import Document, Refused

log = logging.getLogger("hostaudit.indexer.writer")

OUTAGE_LOG_INTERVAL = 60.0  # while the engine is down, one warning a minute


class Abandoned(Exception):
    """The worker is stopping and its drain time is over: the batch is left unfinished (and not committed)."""


@dataclass
class Batch:
    """Records read together, written together, committed together. The consumer fills it; the writer sets
    `outcome` and then `done` (the consumer reads the outcome only after `done`)."""

    number: int
    documents: list[Document]
    refused: list[Refused]  # refused before sending (malformed JSON, no event.id): dead letters
    offsets: dict[Any, int]  # TopicPartition -> the offset to commit (the last one read + 1)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: "Outcome | None" = None
    revoked: set[Any] = field(default_factory=set)  # partitions taken away meanwhile: not committed by us


@dataclass
class Outcome:
    indexed: int = 0
    duplicates: int = 0
    rejected: int = 0  # refused by the engine (400): dead-lettered
    abandoned: bool = False


@dataclass
class WriterStats:
    """The writer's figures, written by its thread only, read by the heartbeat thread."""

    indexed: int = 0
    duplicates: int = 0
    rejected: int = 0  # documents the engine refused (400), sent to the dead-letter topic
    malformed: int = 0  # records refused before sending (malformed JSON, no event.id...), dead-lettered
    dead_lettered: int = 0  # rejected + malformed, once the dead-letter topic acknowledged them
    retries: int = 0  # bulk requests (or dead-letter sends) that failed and were made again
    retried_documents: int = 0  # documents sent again after a 429/5xx or an unreachable engine
    bulk_requests: int = 0
    batches: int = 0
    engine_up: bool = True
    down_since: float = 0.0  # time.time() when the current outage began (0 when up)
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _chunks(documents: Sequence[Document], max_bytes: int) -> list[list[Document]]:
    """`documents` in order, cut into requests below `max_bytes` (a larger document goes alone)."""
    chunks: list[list[Document]] = []
    current: list[Document] = []
    size = 0
    for document in documents:
        if current and size + document.size > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(document)
        size += document.size
    if current:
        chunks.append(current)
    return chunks


def _body(documents: Sequence[Document]) -> bytes:
    parts = []
    for document in documents:
        parts += (document.action, document.body, b"\n")
    return b"".join(parts)


class BulkWriter:
    """Writes batches (the logic of the actor, which only runs it on its thread)."""

    def __init__(self, client: BulkClient, dead_letters: DeadLetters, max_bytes: int, backoff_init: float,
                 backoff_max: float, abandon: threading.Event, stats: WriterStats | None = None) -> None:
        self.client, self.dead_letters = client, dead_letters
        self.max_bytes, self.backoff_init, self.backoff_max = max_bytes, backoff_init, backoff_max
        self.abandon = abandon
        self.stats = stats or WriterStats()
        self._delay = 0.0
        self._outage_logged = 0.0

    def write(self, batch: Batch) -> Outcome:
        """Write `batch` to the end (retrying as long as it takes); Outcome.abandoned if `abandon` was set."""
        outcome = Outcome()
        stats = self.stats
        refused = list(batch.refused)
        stats.malformed += len(batch.refused)
        pending: list[list[Document]] = _chunks(batch.documents, self.max_bytes)
        try:
            while pending:
                chunk = pending.pop(0)
                try:
                    results = self.client.bulk(_body(chunk), len(chunk))
                except EngineUnavailable as error:
                    self._failed(str(error), len(chunk), engine_down=True)
                    pending.insert(0, chunk)
                    continue
                except RequestRefused as error:
                    stats.bulk_requests += 1
                    if len(chunk) == 1:  # this document is the one the engine cannot take
                        refused.append(Refused(chunk[0].source, chunk[0].body, f"refused by the engine: {error}"))
                        outcome.rejected += 1
                        stats.rejected += 1
                    else:  # find the document at fault: each half on its own, at once
                        half = len(chunk) // 2
                        pending[:0] = [chunk[:half], chunk[half:]]
                    continue
                stats.bulk_requests += 1
                again: list[Document] = []
                problem = ""
                for document, result in zip(chunk, results):
                    status = result.status
                    if status < 300:
                        outcome.indexed += 1
                        stats.indexed += 1
                    elif status == DUPLICATE:
                        outcome.duplicates += 1
                        stats.duplicates += 1
                    elif status == BAD_DOCUMENT:
                        refused.append(Refused(document.source, document.body,
                                               f"refused by the engine: {result.error}"))
                        outcome.rejected += 1
                        stats.rejected += 1
                    else:  # 429, 5xx, or a refusal that is not the document's fault (403, 404): again
                        again.append(document)
                        problem = problem or f"HTTP {status}: {result.error}"
                if again:
                    self._failed(f"{len(again)} of {len(chunk)} documents not taken ({problem})", len(again),
                                 engine_down=False)
                    pending.insert(0, again)
                else:
                    self._recovered()
            self._dead_letter(refused)
        except Abandoned:
            outcome.abandoned = True
        stats.batches += 1
        return outcome

    def _dead_letter(self, refused: list[Refused]) -> None:
        while refused:
            try:
                self.dead_letters.send(refused)
            except DeadLetterUnavailable as error:
                self._failed(str(error), 0, engine_down=False)
                continue
            self.stats.dead_lettered += len(refused)
            refused.clear()

    def _failed(self, problem: str, documents: int, engine_down: bool) -> None:
        """Count a failed attempt, log it (at most once a minute while it lasts) and wait the backoff, which
        doubles from backoff.init to backoff.max with jitter; Abandoned if the worker gives up meanwhile."""
        stats = self.stats
        stats.retries += 1
        stats.retried_documents += documents
        stats.last_error = problem
        now = time.time()
        if engine_down and stats.engine_up:
            stats.engine_up, stats.down_since = False, now
        self._delay = min(self.backoff_max, self._delay * 2 if self._delay else self.backoff_init)
        if now - self._outage_logged >= OUTAGE_LOG_INTERVAL:
            self._outage_logged = now
            log.warning("%s; retrying in %.1f s, and reading no more from Kafka until it passes (nothing is "
                        "skipped)", problem, self._delay)
        if self.abandon.wait(random.uniform(self._delay / 2, self._delay)):
            raise Abandoned()

    def _recovered(self) -> None:
        stats = self.stats
        if not stats.engine_up:
            log.warning("the engine takes documents again after %.0f s", time.time() - stats.down_since)
            stats.engine_up, stats.down_since = True, 0.0
        elif self._delay:
            log.info("documents are taken again")
        self._delay, self._outage_logged = 0.0, 0.0


@dataclass(frozen=True)
class Write:
    """Message: write this batch, then set its outcome and `done`."""

    batch: Batch


class BulkWriterActor(pykka.ThreadingActor):
    """Owns the bulk client and the dead-letter producer; writes the consumer's batches one after the other,
    in the order they come (so offsets are committed in order)."""

    def __init__(self, writer: BulkWriter, crashed: Callable[[BaseException], None]) -> None:
        super().__init__()
        self.writer, self.crashed = writer, crashed

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Write):
            message.batch.outcome = self.writer.write(message.batch)
            message.batch.done.set()
        return None

    def on_failure(self, exception_type: Any, exception_value: BaseException | None, traceback: Any) -> None:
        log.error("bulk writer failed: %s", exception_value, exc_info=(exception_type, exception_value, traceback))
        self.crashed(exception_value or RuntimeError("bulk writer failed"))

    def on_stop(self) -> None:
        self.writer.client.close()
        self.writer.dead_letters.close()
