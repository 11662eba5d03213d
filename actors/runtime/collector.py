"""The collector: every period it observes one dataset, diffs, spools the events, then commits its state."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pykka

from actors.event import Event, deep_merge, encode_document
from actors.outputs.routing import routing_values
from actors.runtime.spool import SpoolWriter, unacknowledged_bytes
from actors.runtime.state import CommittedState, StateStore

log = logging.getLogger("hostaudit.collector")

PROBLEM_LOG_INTERVAL = 60.0  # a lasting problem (spool full, disk full) is logged once a minute, with numbers
STREAM_PERSIST_INTERVAL = 1.0
SPOOL_CHECK_INTERVAL = 5.0  # seconds a look at the spool's size holds while this runner appends within its room
MAX_TIMER_SECONDS = 366 * 86400.0


def with_fields(event: Event, extra: Mapping[str, Any]) -> Event:
    """Return `event` with `extra` merged into its fields."""
    return replace(event, fields=deep_merge(deep_merge({}, event.fields), extra))


@dataclass
class CycleResult:
    """What one collection cycle did, for heartbeats and logs."""

    events: int = 0
    blocked: bool = False  # the spool was full: nothing emitted, nothing committed
    duration: float = 0.0


class DatasetRunner:
    """Drives one dataset: observe -> diff against the committed state -> spool -> commit.

    Events are spooled (durable) before the state they were derived from is committed, so a crash between
    the two repeats a change rather than losing it. When the spool is full nothing is emitted or committed
    and the next cycle catches up by diff: a change is reported late, never lost.
    """

    def __init__(self, dataset: Any, state_period: float, store: StateStore, spool: SpoolWriter,
                 spool_root: Path, spool_max_bytes: int, common: Callable[[], Mapping[str, Any]],
                 on_spooled: Callable[[], None] = lambda: None,
                 routing_fields: frozenset[str] = frozenset()) -> None:
        self.dataset = dataset
        self.name: str = dataset.name
        self.state_period = state_period
        self.store = store
        self.spool = spool
        self.spool_root = spool_root
        self.spool_max_bytes = spool_max_bytes
        self.common = common
        self.on_spooled = on_spooled
        self.routing_fields = routing_fields  # recorded beside each event: the output routes by them
        committed = store.load(self.name)
        self.committed = replace(committed, sequence=max(committed.sequence, spool.last_sequence))
        self.restored = committed.snapshot is not None  # the first diff then covers the agent's downtime
        # A LogDataset (actors.datasets) reads on from its committed cursors: `advance` replaces observe + diff.
        self.follows_log = hasattr(dataset, "advance")
        self._persisted_snapshot: Any = committed.snapshot
        self.events_emitted = 0
        self.events_dropped = 0  # events that could not be kept (spool write failed on kernel notifications)
        self._persisted_at = 0.0
        self._unpersisted = False
        self._problem_logged_at: dict[str, float] = {}
        self._held = 0  # change events held back by the last failed spool write (derived again by diff)
        self._spool_checked_at = float("-inf")
        self._spool_room = 0  # bytes this runner may append before it looks at the spool's size again

    def state_report_due(self, now: float) -> bool:
        last = self.committed.last_state_report
        return last is None or now - last >= self.state_period

    def cycle(self) -> CycleResult:
        started = time.monotonic()
        now = time.time()
        if self._spool_full():
            return CycleResult(blocked=True, duration=time.monotonic() - started)
        changes: Sequence[Event] = []
        if self.follows_log:  # it marks what it found at startup itself (a backlog may take several calls)
            current, changes = self.dataset.advance(self.committed.snapshot)
        else:
            current = self.dataset.observe()
        events: list[Event] = []
        report_due = self.state_report_due(now)
        if report_due:
            report = {"system": {"audit": {"report": {"id": str(uuid.uuid4())}}}}
            events += [with_fields(event, report) for event in self.dataset.state_report(current)]
        if not self.follows_log and self.committed.snapshot is not None:
            changes = self.dataset.diff(self.committed.snapshot, current, at_startup=self.restored)
            if self.restored:
                changes = [with_fields(event, {"system": {"audit": {"detected_at_startup": True}}})
                           for event in changes]
        events += changes
        first_commit = self.committed.snapshot is None
        # A log dataset's cursors also move without events (records that make none): they are persisted too.
        moved = self.follows_log and current is not self._persisted_snapshot
        try:
            self._spool_and_commit(events, current, now if report_due else self.committed.last_state_report,
                                   persist=bool(events) or report_due or first_commit or moved)
        except OSError as error:  # e.g. the disk is full: nothing committed, the next cycle diffs again
            self._resync_sequence()
            self._held = len(events)
            self._warn("spool", "dataset %s: cannot write the spool (%s); %d events held until it can (they are "
                       "derived again by diff, nothing is lost)", self.name, error.strerror or error, len(events))
            return CycleResult(blocked=True, duration=time.monotonic() - started)
        if self._held:
            log.info("dataset %s: the spool is writable again; the %d held events are spooled", self.name,
                     self._held)
            self._held = 0
        self.restored = False
        return CycleResult(events=len(events), duration=time.monotonic() - started)

    def apply_stream(self, items: Sequence[Any]) -> bool:
        """Fold kernel notifications into the committed snapshot and spool their events (a log dataset's
        notifications run a cycle).

        Returns False (nothing done) while the spool is full: the caller keeps the items and offers them again.
        """
        if self.follows_log:  # its files changed: read on now, as a poll does (a failed spool write is read again)
            self.cycle()
            return True
        if self._spool_full():
            return False
        snapshot, events = self.dataset.apply_stream(self.committed.snapshot, items)
        # During an exec storm the snapshot is persisted at most once a second (a crash in between can only
        # repeat a start or stop after the restart, never lose one); the in-memory snapshot is always current.
        persist = bool(events) and time.monotonic() - self._persisted_at >= STREAM_PERSIST_INTERVAL
        try:
            self._spool_and_commit(list(events), snapshot, self.committed.last_state_report, persist=persist)
        except OSError as error:
            # Kernel notifications cannot be derived again later: the events not stored are lost. Their
            # sequence numbers are used up all the same, so `event.sequence` shows a gap where they were, and
            # they are counted (`events_dropped`). The next poll still reconciles what is alive.
            stored = max(0, self.spool.last_sequence - self.committed.sequence)
            dropped = len(events) - stored
            self.committed = replace(self.committed, sequence=self.committed.sequence + len(events))
            self.events_dropped += dropped
            self.events_emitted += stored
            self._warn("dropped", "dataset %s: cannot write the spool (%s); %d events from kernel notifications "
                       "dropped (%d in all), leaving a gap in event.sequence", self.name, error.strerror or error,
                       dropped, self.events_dropped)
        return True

    def _spool_and_commit(self, events: Sequence[Event], snapshot: Any, last_state_report: float | None,
                          persist: bool) -> None:
        """Spool `events`, then commit the snapshot they were derived from (persisted when it matters)."""
        sequence = self._spool(events)
        self.committed = CommittedState(snapshot, last_state_report, sequence)
        self._unpersisted = True
        if persist:
            self._persist()
        self.events_emitted += len(events)

    def _persist(self) -> None:
        """Commit the state to the store; if the store cannot be written (disk full) keep it in memory and try
        again at the next commit (the events are spooled already: a crash before then only repeats them)."""
        try:
            self.store.commit(self.name, self.committed)
        except sqlite3.Error as error:
            self._warn("state", "dataset %s: cannot commit its state to %s (%s); kept in memory and retried",
                       self.name, self.store.path, error)
            return
        self._persisted_at = time.monotonic()
        self._persisted_snapshot = self.committed.snapshot
        self._unpersisted = False

    def _resync_sequence(self) -> None:
        """After a failed spool write, continue numbering after what the spool really stored."""
        self.committed = replace(self.committed, sequence=max(self.committed.sequence, self.spool.last_sequence))

    def _spool_full(self) -> bool:
        """True when the unacknowledged bytes of every spool reach `queue.disk.max_size` (logged once a minute).

        Looking lists every spool directory and reads its cursor: after a look that found room, the next
        SPOOL_CHECK_INTERVAL s of batches do not look again while this runner appends less than half that room
        (a kernel stream spools a batch every 50 to 200 ms)."""
        now = time.monotonic()
        if self._spool_room > 0 and now - self._spool_checked_at < SPOOL_CHECK_INTERVAL:
            return False
        pending = unacknowledged_bytes(self.spool_root)
        if pending < self.spool_max_bytes:
            self._spool_checked_at, self._spool_room = now, (self.spool_max_bytes - pending) // 2
            return False
        self._spool_room = 0
        self._warn("full", "dataset %s: %d unacknowledged bytes under %s reach queue.disk.max_size (%d bytes); "
                   "holding changes until the output catches up", self.name, pending, self.spool_root,
                   self.spool_max_bytes)
        return True

    def _warn(self, problem: str, message: str, *args: Any) -> None:
        """Log a lasting problem once a minute, not once a cycle."""
        now = time.monotonic()
        if now - self._problem_logged_at.get(problem, -PROBLEM_LOG_INTERVAL) >= PROBLEM_LOG_INTERVAL:
            self._problem_logged_at[problem] = now
            log.warning(message, *args)

    def _spool(self, events: Sequence[Event]) -> int:
        """Stamp, encode and durably append `events`, each with the values of the fields the output routes
        by; return the last sequence used."""
        sequence = self.committed.sequence
        if not events:
            return sequence
        common = self.common()
        fields = self.routing_fields
        records = []
        for event in events:
            sequence += 1
            document = event.stamped(sequence).to_document(common)
            records.append((sequence, encode_document(document), routing_values(document, fields) if fields else {}))
            self._spool_room -= len(records[-1][1])
        self.spool.append(records)
        self.on_spooled()
        return sequence

    def close(self) -> None:
        if self._unpersisted and self.committed.snapshot is not None:
            self._persist()
        self.spool.close()
        self.store.close()


class _CrashingTimer(threading.Thread):
    """Calls `action(message)` at a fixed rate: first after `delay` seconds, then `period` seconds after each due
    time, but never before the previous firing's work is `done()` (then at once). One thread for all of an
    actor's ticks, which wakes once a firing: it sleeps until the next due time before it looks whether the work
    is done, which it usually is by then (the actor's `done()` then wakes no one). If the timer itself fails, the
    process is told to crash (`on_crash`) rather than the dataset silently never ticking again."""

    def __init__(self, delay: float, period: float, action: Callable[[Any], Any], message: Any,
                 on_crash: Callable[[BaseException], None]) -> None:
        super().__init__(name="tick", daemon=True)
        self.delay, self.period, self.action, self.message, self.on_crash = delay, period, action, message, on_crash
        self.cancelled = threading.Event()
        self._done = threading.Event()

    def done(self) -> None:
        """The work of the last firing is done: the next may come (at its due time)."""
        self._done.set()

    def cancel(self) -> None:
        self.cancelled.set()
        self._done.set()

    def run(self) -> None:
        try:
            due = time.monotonic() + self.delay
            while not self.cancelled.wait(min(MAX_TIMER_SECONDS, max(0.0, due - time.monotonic()))):
                self._done.clear()
                self.action(self.message)
                due += self.period
                if self.cancelled.wait(min(MAX_TIMER_SECONDS, max(0.0, due - time.monotonic()))):
                    return
                self._done.wait()
                due = max(due, time.monotonic())  # work that outlasted its period: the next firing at once
        except pykka.ActorDeadError:
            pass  # the actor stopped while the timer was pending: nothing to tick
        except BaseException as error:  # noqa: BLE001 - a timer that dies must not go unnoticed
            log.exception("collection timer failed")
            self.on_crash(error)


class Progress:
    """The collector's heartbeat figures, published without a lock.

    One writer per slot, and slots are only ever replaced, never changed in place: the actor thread replaces
    `figures` (a new dict after every cycle or stream batch) and the stream thread replaces `stream` (its
    counts). Replacing an attribute is one reference store, atomic in CPython, so the heartbeat thread, which
    only reads the two, never sees a torn or half-updated set of figures; `progress` moving is what tells the
    supervisor the collector is not hung.
    """

    def __init__(self) -> None:
        self.figures: Mapping[str, Any] = {"progress": 0, "events": 0, "dropped": 0, "scan_seconds": 0.0,
                                           "blocked": False}
        self.stream: Mapping[str, int] = {}

    def advance(self, runner: DatasetRunner, cycle: CycleResult | None = None) -> None:
        """Actor thread only: publish new figures after a cycle (or a stream batch, `cycle` None)."""
        last = self.figures
        self.figures = {"progress": last["progress"] + 1, "events": runner.events_emitted,
                        "dropped": runner.events_dropped,
                        "scan_seconds": cycle.duration if cycle else last["scan_seconds"],
                        "blocked": cycle.blocked if cycle else last["blocked"]}

    def read(self) -> dict[str, Any]:
        """Any thread: the figures a heartbeat carries."""
        return {**self.figures, **self.stream}


@dataclass(frozen=True)
class Tick:
    """Message: run one collection cycle now."""


@dataclass(frozen=True)
class StreamItems:
    """Message: kernel notifications read by the stream thread; the reply says whether they were taken."""

    items: Sequence[Any]


STREAM_BATCH_SECONDS = 0.05  # unless the stream says otherwise (`batch_seconds`: it may batch itself)
STREAM_IDLE_SECONDS = 5.0  # the longest wait in one read for a batch's first item (the pump re-checks stopping)
STREAM_BATCH_ITEMS = 2000
STREAM_FLUSH_SECONDS = 1.0  # at a stop: the longest wait for the stream to hand over what it holds, and then to
# spool it (within the supervisor's COLLECTOR_STOP_SECONDS)


def finish_stream(stream: Any, pump: threading.Thread, flushed: threading.Event) -> None:
    """At a stop (after `stopping` is set, before the actor stops): have a stream that holds items (`finish`: the
    process connector's reader holds up to 200 ms of them) hand them over, and the pump spool them."""
    stream.finish(STREAM_FLUSH_SECONDS)
    flushed.set()
    pump.join(STREAM_FLUSH_SECONDS)


def _hand_what_is_left(stream: Any, actor: pykka.ActorRef) -> None:
    """The last batch at a stop: everything the stream still has, at once."""
    batch: list[Any] = []
    while more := stream.read(0.0):
        batch += more
    if batch and not actor.ask(StreamItems(batch)):
        log.warning("%d kernel notifications read before the stop could not be spooled (spool full)", len(batch))


def pump_stream(stream: Any, actor: pykka.ActorRef, stopping: threading.Event, stats: Progress,
                on_crash: Callable[[BaseException], None] = lambda error: None,
                flushed: threading.Event | None = None) -> None:
    """Read kernel notifications in batches (what comes within the stream's `batch_seconds`, by default 50 ms, up
    to 2,000 items) and hand each to the collector actor, waiting until it is spooled before reading more, so a
    slow pipeline backs up into the kernel's buffer. Once `stopping`, and then `flushed` (the stream has handed
    over what it held: see `finish_stream`), what the stream still has goes to the actor in a last batch.
    If the subscription breaks, the process exits (`on_crash`) and the supervisor restarts it, re-subscribed."""
    try:
        _pump_stream(stream, actor, stopping, stats)
        if flushed is not None and flushed.wait(STREAM_FLUSH_SECONDS):
            _hand_what_is_left(stream, actor)
    except Exception as error:
        if stopping.is_set():
            return  # the agent is stopping (a group-wide SIGTERM may have ended the stream first)
        log.exception("kernel notifications stream failed")
        on_crash(error)


def _pump_stream(stream: Any, actor: pykka.ActorRef, stopping: threading.Event, stats: Progress) -> None:
    items = 0
    window = getattr(stream, "batch_seconds", None)
    window = STREAM_BATCH_SECONDS if window is None else window
    while not stopping.is_set():
        started = time.monotonic()
        batch: list[Any] = list(stream.read(STREAM_IDLE_SECONDS))  # the first items, or none for a while
        # The batch ends where a `window` read begun at `started` would have ended: the latency of one read a batch
        # time, without its twenty wake-ups a second when nothing comes.
        now = time.monotonic()
        deadline = now + window - (now - started) % window if window > 0 else now
        if batch and not stopping.wait(max(0.0, deadline - time.monotonic())):
            # The rest of the batch time asleep, then what came meanwhile at once: one wake-up a batch, not one
            # for each of the reader's frames.
            while len(batch) < STREAM_BATCH_ITEMS and (more := stream.read(0.0)):
                batch += more
        items += len(batch)
        stats.stream = {"lost": stream.lost(), "items": items}  # replaced whole: see Progress
        if not batch:
            continue
        while not actor.ask(StreamItems(batch)):
            if stopping.wait(0.2):
                return


class CollectorActor(pykka.ThreadingActor):
    """Schedules the runner's cycles every `period` at a fixed rate, and records progress."""

    def __init__(self, runner: DatasetRunner, period: float, progress: Progress,
                 hang_file: str = "", on_crash: Callable[[BaseException], None] = lambda error: None) -> None:
        super().__init__()
        self.runner = runner
        self.period = period
        self.progress = progress
        self.hang_file = hang_file
        self.on_crash = on_crash
        self._timer: _CrashingTimer | None = None
        self._started = time.monotonic()

    def on_start(self) -> None:
        self.actor_ref.tell(Tick())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self._tick()
        elif isinstance(message, StreamItems):
            return self._apply_stream(message.items)
        return None

    def _apply_stream(self, items: Sequence[Any]) -> bool:
        try:
            taken = self.runner.apply_stream(items)
        except Exception as error:  # a bug in a dataset: the process exits and the supervisor restarts it
            log.exception("dataset %s: applying kernel notifications failed", self.runner.name)
            self.on_crash(error)
            return False
        self.progress.advance(self.runner)
        return taken

    def _tick(self) -> None:
        self._wedge_if_asked()
        try:
            result = self.runner.cycle()
        except Exception as error:  # a bug in a dataset: the process exits and the supervisor restarts it
            log.exception("dataset %s: collection failed", self.runner.name)
            self.on_crash(error)
            return
        self.progress.advance(self.runner, result)
        if self._timer is None:  # the first cycle, told by on_start: the timer ticks from then on
            delay = max(0.0, self._started + self.period - time.monotonic())
            self._timer = _CrashingTimer(delay, self.period, self.actor_ref.tell, Tick(), self.on_crash)
            self._timer.start()
        else:
            self._timer.done()

    def _wedge_if_asked(self) -> None:
        """Test hook (`debug.hang_file`): stop making progress, as a collector stuck in a read would.

        The hook fires when the file exists and is empty or names this dataset on one of its lines.
        """
        if not self.hang_file:
            return
        try:
            named = Path(self.hang_file).read_text().split()
        except FileNotFoundError:
            return
        if not named or self.runner.name in named:
            log.warning("dataset %s: %s exists, hanging on purpose (debug.hang_file)", self.runner.name,
                        self.hang_file)
            while True:
                time.sleep(3600)

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.runner.close()
