"""The consumer actor: one member of the Kafka consumer group; reads records into batches for the bulk writer,
stops reading while the writer is behind (the engine is slow or down), and commits each partition's offset
only once every record before it is indexed or dead-lettered."""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pykka
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from actors.indexer.documents import Document, DocumentReader, Refused, Source
from actors.indexer.settings import KafkaSettings
from actors.indexer.writer import Batch, Write
from actors.outputs.kafka import describe_error, producer_config

log = logging.getLogger("hostaudit.indexer.consumer")

IN_FLIGHT = 2  # batches handed to the writer and not done: one being written, the next one ready
IDLE_POLL_MS = 500  # how long a poll waits when there is nothing to do
BUSY_POLL_MS = 20  # how long a poll waits while the writer works (so its completion is noticed soon)
LINGER_SECONDS = 1.0  # the longest a record waits for its batch to fill while more keep coming
LAG_REFRESH = 5.0  # seconds between end-offset lookups while paused (no fetch brings the high watermark)
CONNECT_RETRY_MAX = 10.0
COMMIT_TIMEOUT_MS = 10_000
COMMIT_WARNING_INTERVAL = 60.0  # while commits fail (Kafka unreachable), one warning a minute
MEMBERSHIP_TIMEOUT_MIN = 30.0  # seconds without a heartbeat to the group before the worker is restarted...
MEMBERSHIP_TIMEOUT_SESSIONS = 3  # ...or this many session timeouts, if longer


class OutOfGroup(Exception):
    """The consumer sent no heartbeat to its group for too long: it is not a member any more (Kafka
    unreachable, or kafka-python lost its way in a rebalance) and reads nothing; the worker is restarted."""


def membership_lost(connected_for: float, heartbeat_ago: float | None, session_timeout: float) -> bool:
    """True when a consumer connected `connected_for` seconds ago last heartbeated `heartbeat_ago` seconds
    ago (inf: never; None: not known) and that is too long for a member of a group. A rebalance disables the
    heartbeats while it waits for the members, about a session timeout at most; a standby member without
    partitions heartbeats like the others."""
    limit = max(MEMBERSHIP_TIMEOUT_MIN, MEMBERSHIP_TIMEOUT_SESSIONS * session_timeout)
    return heartbeat_ago is not None and connected_for > limit and heartbeat_ago > limit
SECURITY_KEYS = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")


def consumer_config(kafka: KafkaSettings, client_id: str, max_poll_records: int) -> dict[str, Any]:
    """kafka-python KafkaConsumer arguments: the group, manual commits, and the same TLS/SASL setup as the
    Kafka output (`producer_config`)."""
    security = producer_config(kafka.client)
    timeout_ms = int(float(kafka.client.get("timeout", 30)) * 1000)
    session_ms = int(kafka.session_timeout * 1000)
    return {
        "bootstrap_servers": list(kafka.client["hosts"]),
        "client_id": client_id,
        "group_id": kafka.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "max_poll_records": max_poll_records,
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 3),
        "request_timeout_ms": max(timeout_ms, session_ms + 5000),
        "bootstrap_timeout_ms": timeout_ms,
        "reconnect_backoff_max_ms": 10_000,
        **{key: security[key] for key in SECURITY_KEYS if key in security},
    }


@dataclass(frozen=True)
class Tick:
    """Message: one step of the consumer loop (it sends itself the next one)."""


@dataclass(frozen=True)
class Drain:
    """Message: read no more, let the writer finish what was read, commit, leave the group, then set `done`."""

    done: pykka.ThreadingFuture


class ConsumerStats:
    """The consumer's figures, replaced as a whole by its thread, read by the heartbeat thread."""

    def __init__(self) -> None:
        self.progress = 0  # loop steps: moves while the consumer lives, even when paused (hang detection)
        self.records = 0
        self.committed_batches = 0
        self.commit_failures = 0
        self.paused = False
        self.partitions: dict[str, dict[str, Any]] = {}  # "topic/partition" -> committed, end, lag

    def as_dict(self) -> dict[str, Any]:
        return {"progress": self.progress, "records": self.records, "committed_batches": self.committed_batches,
                "commit_failures": self.commit_failures, "paused": self.paused, "partitions": self.partitions}


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, actor: "ConsumerActor") -> None:
        self.actor = actor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.actor.revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.actor.assigned(set(assigned))


class ConsumerActor(pykka.ThreadingActor):
    """Reads the topics as one member of the group and hands batches to the bulk writer (at most IN_FLIGHT at
    a time: while the writer is behind, the partitions are paused and `poll` only keeps the membership)."""

    def __init__(self, kafka: KafkaSettings, worker: str, reader: DocumentReader, writer: pykka.ActorRef[Any],
                 bulk_max_size: int, bulk_max_bytes: int, stats: ConsumerStats,
                 crashed: Callable[[BaseException], None]) -> None:
        super().__init__()
        self.kafka, self.worker, self.reader, self.writer = kafka, worker, reader, writer
        self.bulk_max_size, self.bulk_max_bytes = bulk_max_size, bulk_max_bytes
        self.stats, self.crashed = stats, crashed
        self.consumer: KafkaConsumer | None = None
        self.assignment: set[TopicPartition] = set()
        self.in_flight: collections.deque[Batch] = collections.deque()
        self.building: list[Document | Refused] = []
        self.building_bytes = 0
        self.building_since = 0.0
        self.to_commit: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}  # last offset committed (or found committed) per partition
        self.batches = 0
        self.paused = False
        self.draining: pykka.ThreadingFuture | None = None
        self.abandoned = False
        self.closed = False
        self._connect_delay = 0.0
        self._lag_at = 0.0
        self._ends_at = 0.0
        self._commit_warned = -COMMIT_WARNING_INTERVAL
        self._connected_at = 0.0
        self._ends: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()  # revoked by the rebalance under way, maybe assigned again

    # --- the loop --------------------------------------------------------------------------------------
    def on_start(self) -> None:
        self.actor_ref.tell(Tick())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self.stats.progress += 1
            try:
                if self.consumer is None and not self.draining:
                    self._connect()
                elif self.consumer is not None:
                    self._step()
                elif self.draining:
                    self._close()
            except OutOfGroup as error:
                log.error("%s", error)  # expected, and said in one line: no traceback
                self.crashed(error)
            if not self.closed:
                self.actor_ref.tell(Tick())
        elif isinstance(message, Drain):
            self.draining = message.done
        return None

    def _connect(self) -> None:
        try:
            consumer = KafkaConsumer(**consumer_config(self.kafka, self.worker, self.bulk_max_size))
            consumer.subscribe(list(self.kafka.topics), listener=_Rebalance(self))
        except (KafkaError, OSError) as error:
            self._connect_delay = min(CONNECT_RETRY_MAX, self._connect_delay * 2 or 0.5)
            log.warning("cannot connect to Kafka at %s: %s; trying again in %.1f s",
                        ", ".join(self.kafka.client["hosts"]), describe_error(error), self._connect_delay)
            time.sleep(self._connect_delay)
            return
        self.consumer, self._connect_delay = consumer, 0.0
        self._connected_at = time.monotonic()
        log.info("reading %s as a member of the consumer group %s", ", ".join(self.kafka.topics), self.kafka.group_id)

    def _step(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        self._finish()
        if self.draining is not None:
            if self.building:
                self._submit()
            if not self.in_flight:
                self._commit()
                self._close()
                return
        if self.draining is not None or len(self.in_flight) >= IN_FLIGHT:
            self._pause(True)
            # keeps the group membership (and runs a rebalance if one is due); paused partitions return no
            # records, but whatever a poll returns is kept: its position has moved past it
            self._read(consumer.poll(timeout_ms=0))
            if self.in_flight:
                self.in_flight[0].done.wait(0.1)
        else:
            self._pause(False)
            room = max(1, self.bulk_max_size - len(self.building))
            records = consumer.poll(timeout_ms=BUSY_POLL_MS if self.in_flight or self.building else IDLE_POLL_MS,
                                    max_records=room)
            got = self._read(records)
            if self.building and (len(self.building) >= self.bulk_max_size or
                                  self.building_bytes >= self.bulk_max_bytes or
                                  not got and not self.in_flight or
                                  time.monotonic() - self.building_since >= LINGER_SECONDS):
                self._submit()  # full; or Kafka has no more right now and the writer is idle; or waited enough
        self._commit()
        self._refresh_lag()

    # --- records into batches -------------------------------------------------------------------------
    def _read(self, records: Mapping[TopicPartition, list[Any]]) -> int:
        """Add the records to the batch being built; how many there were."""
        read = self.reader.read
        if records and not self.building:
            self.building_since = time.monotonic()
        got = 0
        for partition, messages in records.items():
            for message in messages:
                item = read(Source(message.topic, message.partition, message.offset, message.key), message.value)
                self.building.append(item)
                self.building_bytes += item.size
                self.stats.records += 1
            if messages:
                self.committed.setdefault(partition, messages[0].offset)  # where the group stood
                got += len(messages)
        return got

    def _submit(self) -> None:
        offsets: dict[TopicPartition, int] = {}
        documents: list[Document] = []
        refused: list[Refused] = []
        for item in self.building:
            source = item.source
            offsets[TopicPartition(source.topic, source.partition)] = source.offset + 1
            (documents if isinstance(item, Document) else refused).append(item)
        self.batches += 1
        batch = Batch(self.batches, documents, refused, offsets)
        self.building, self.building_bytes = [], 0
        self.in_flight.append(batch)
        self.writer.tell(Write(batch))

    def _finish(self) -> None:
        """Take the batches the writer finished, in order, and queue their offsets for the commit."""
        while self.in_flight and self.in_flight[0].done.is_set():
            batch = self.in_flight.popleft()
            assert batch.outcome is not None
            if batch.outcome.abandoned:
                self.abandoned = True
                self.in_flight.clear()  # the worker is giving up: nothing after it was written either
                return
            for partition, offset in batch.offsets.items():
                if partition in self.assignment and partition not in batch.revoked:
                    self.to_commit[partition] = offset
            self.stats.committed_batches += 1

    def _commit(self) -> None:
        if not self.to_commit or self.consumer is None:
            return
        offsets = {partition: OffsetAndMetadata(offset, "", -1) for partition, offset in self.to_commit.items()}
        try:
            self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as error:
            self.stats.commit_failures += 1
            if time.monotonic() - self._commit_warned >= COMMIT_WARNING_INTERVAL:
                self._commit_warned = time.monotonic()
                log.warning("could not commit offsets (%s); trying again with the next batch (if the partitions "
                            "move meanwhile, their next owner reads those records again: a duplicate is not "
                            "indexed twice)", describe_error(error))
            return
        self.committed.update(self.to_commit)
        self.to_commit.clear()

    def _pause(self, pause: bool) -> None:
        if pause == self.paused or self.consumer is None:
            return
        partitions = list(self.assignment)
        if pause:
            self.consumer.pause(*partitions)
        else:
            self.consumer.resume(*self.consumer.paused())
        self.paused = self.stats.paused = pause

    # --- rebalancing (kafka-python calls these on its network thread, inside `poll`: nothing may block) --------
    #
    # kafka-python keeps a partition's position across a rebalance when the partition stays with this member
    # (eager rebalancing revokes every partition and then assigns them again, mostly the same ones). So what
    # was read from a partition that stays is kept and written; only a partition that goes to another member
    # is forgotten: its records not yet committed are read again by the new owner (409s, never a second
    # document), so none of them may be committed by this member any more.
    def revoked(self, partitions: set[TopicPartition]) -> None:
        """Commit what is done for the partitions (without waiting: the rebalance may give them to another
        member); what they lose is decided in `assigned`."""
        self._finish()
        done = {partition: OffsetAndMetadata(offset, "", -1) for partition, offset in self.to_commit.items()
                if partition in partitions}
        if done and self.consumer is not None:
            try:
                self.consumer.commit_async(done)  # sent before the rebalance's join: still this generation
            except KafkaError as error:
                log.warning("could not commit offsets before a rebalance (%s); the partitions' next owner reads "
                            "those records again", describe_error(error))
        self._revoked |= partitions

    def assigned(self, partitions: set[TopicPartition]) -> None:
        lost = self._revoked - partitions
        self._revoked = set()
        for batch in self.in_flight:
            batch.revoked |= lost
        if lost:
            self.building = [item for item in self.building
                             if TopicPartition(item.source.topic, item.source.partition) not in lost]
            self.building_bytes = sum(item.size for item in self.building)
        for partition in lost:
            self.to_commit.pop(partition, None)
            self.committed.pop(partition, None)
            self._ends.pop(partition, None)
        added = partitions - self.assignment
        self.assignment = (self.assignment - lost) | partitions
        if self.paused and added and self.consumer is not None:
            self.consumer.pause(*added)
        if lost:
            log.info("partitions gone to other members: %s", _names(lost))
        log.info("partitions assigned: %s", _names(self.assignment) or "none (more members than partitions)")

    # --- figures ---------------------------------------------------------------------------------------
    def _refresh_lag(self) -> None:
        """Per partition: the committed offset, the end of the log and the difference (every second)."""
        now = time.monotonic()
        if now - self._lag_at < 1.0 or self.consumer is None:
            return
        consumer = self.consumer
        if self.assignment and (self.paused or any(consumer.highwater(p) is None for p in self.assignment)) \
                and now - self._ends_at >= LAG_REFRESH:
            self._ends_at = now
            try:
                self._ends.update(consumer.end_offsets(list(self.assignment), timeout_ms=1000))
            except (KafkaError, ValueError):
                pass  # figures only: the next refresh tries again
        self._lag_at = now
        self._check_membership(now)
        for partition in self.assignment - set(self.committed):  # assigned, nothing read or committed yet
            try:
                offset = consumer.committed(partition, timeout_ms=1000)
            except (KafkaError, ValueError):
                offset = None  # figures only: the next refresh asks again
            if offset is not None and partition in self.assignment:
                self.committed.setdefault(partition, offset)
        partitions = {}
        for partition in sorted(self.assignment):
            end = consumer.highwater(partition)
            end = max(end if end is not None else -1, self._ends.get(partition, -1))
            committed = self.committed.get(partition)
            partitions[f"{partition.topic}/{partition.partition}"] = {
                "topic": partition.topic, "partition": partition.partition, "committed": committed,
                "end": end if end >= 0 else None,
                "lag": max(0, end - committed) if end >= 0 and committed is not None else None}
        self.stats.partitions = partitions

    def _check_membership(self, now: float) -> None:
        """Raise OutOfGroup when the consumer has not heartbeated to its group for too long (the worker exits
        and the supervisor starts it again: a member again, its uncommitted records read again)."""
        assert self.consumer is not None
        figures = (self.consumer.metrics() or {}).get("consumer-coordinator-metrics") or {}
        heartbeat_ago = figures.get("last-heartbeat-seconds-ago")
        if membership_lost(now - self._connected_at, heartbeat_ago, self.kafka.session_timeout):
            raise OutOfGroup(f"no heartbeat to the consumer group {self.kafka.group_id} for "
                             f"{min(heartbeat_ago, now - self._connected_at):.0f} s (Kafka unreachable, or this "
                             "consumer fell out of the group): restarting the worker")

    # --- stopping --------------------------------------------------------------------------------------
    def _close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=5000)  # leaves the group: a rebalance at once
            except (KafkaError, OSError) as error:
                log.warning("closing the Kafka consumer: %s", describe_error(error))
            self.consumer = None
        self.closed = True
        if self.draining is not None:
            self.draining.set(not self.in_flight and not self.abandoned)  # True: everything read was committed

    def on_stop(self) -> None:
        if self.consumer is not None:  # stopped before its drain finished: leave the group anyway
            self._close()

    def on_failure(self, exception_type: Any, exception_value: BaseException | None, traceback: Any) -> None:
        log.error("consumer failed: %s", exception_value, exc_info=(exception_type, exception_value, traceback))
        self.crashed(exception_value or RuntimeError("consumer failed"))


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}/{p.partition}" for p in sorted(partitions))
