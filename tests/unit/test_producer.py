"""The producer: per-dataset batches and backoff, dead letters, acknowledgement after the output took them; the
actor that pumps on its own schedule, answers Stats from its own thread, drains on request, crashes loudly."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pykka
import pytest

from actors.outputs import Outgoing, OutputError, Rejection
from actors.runtime.doorbell import Bell, Doorbell
from actors.runtime.producer import Delivery, Drain, ProducerActor, Pump, Stats
from actors.runtime.spool import SpoolWriter
from actors.runtime.worker import ActorFigures


class FlakyForOneDataset:
    """An output (the Output protocol) that cannot take `broken`'s events now, and refuses for good any event
    whose message is 'poison'."""

    def __init__(self, broken: str) -> None:
        self.broken = broken
        self.taken: list[dict] = []

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        documents = [json.loads(event.payload) for event in batch]
        if any(d["event"]["dataset"] == self.broken for d in documents):
            raise OutputError(f"{self.broken} is down")
        rejections = [(i, "poison") for i, d in enumerate(documents) if d["message"] == "poison"]
        self.taken += [d for i, d in enumerate(documents) if (i, "poison") not in rejections]
        return rejections

    def close(self) -> None:
        pass


def spool(data: Path, dataset: str, messages: list[str]) -> None:
    with SpoolWriter(data / "spool" / dataset, fsync=False) as writer:
        writer.append([(n + 1, json.dumps({"event": {"dataset": dataset}, "message": m,
                                           "@timestamp": "2026-01-01T00:00:00.000Z"}).encode())
                       for n, m in enumerate(messages)])


def test_a_failing_dataset_backs_off_alone_and_the_others_are_delivered(tmp_path: Path) -> None:
    spool(tmp_path, "host", ["h1", "h2"])
    spool(tmp_path, "process", ["p1", "p2"])
    output = FlakyForOneDataset(broken="host")
    producer = Delivery(tmp_path, output, backoff_initial=60.0)
    first = producer.pump()
    assert [d["message"] for d in output.taken] == ["p1", "p2"]
    assert first.more and 59 < first.retry_after <= 60.0
    # nothing new for process, and the host batch is not retried before its backoff is due
    assert not producer.pump().more
    assert producer.stats.acknowledged == {"process": 2}
    assert producer.stats.failed_batches == 1


def test_an_event_refused_for_good_is_dead_lettered_and_the_batch_acknowledged(tmp_path: Path) -> None:
    spool(tmp_path, "user", ["u1", "poison", "u3"])
    output = FlakyForOneDataset(broken="none")
    producer = Delivery(tmp_path, output)
    assert producer.pump().more
    assert [d["message"] for d in output.taken] == ["u1", "u3"]
    lines = (tmp_path / "dead-letter" / "user.ndjson").read_text().splitlines()
    kept = json.loads(lines[0])
    assert len(lines) == 1 and kept["reason"] == "poison" and kept["sequence"] == 2
    assert kept["event"]["message"] == "poison"
    assert producer.stats.dead_lettered == {"user": 1} and producer.stats.acknowledged == {"user": 2}
    assert not producer.pump().more, "acknowledged: not sent again"


# --- the actor: it pumps on its own schedule; its mailbox is the only way in -------------------------------

class Recording:
    """An output (the Output protocol) that keeps what it took; `gate`, when given, holds every publish until
    it is set (a wedged broker); `fail_with` makes publish raise it (a bug in an output)."""

    def __init__(self, gate: threading.Event | None = None, fail_with: Exception | None = None) -> None:
        self.gate, self.fail_with = gate, fail_with
        self.taken: list[bytes] = []
        self.publishing = threading.Event()
        self.closed = threading.Event()

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        self.publishing.set()
        if self.gate is not None:
            self.gate.wait(60)
        if self.fail_with is not None:
            raise self.fail_with
        self.taken += [event.payload for event in batch]
        return ()

    def close(self) -> None:
        self.closed.set()


def figures(actor: pykka.ActorRef) -> dict:
    return actor.ask(Stats(), timeout=10)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def doorbell() -> Iterator[tuple[Doorbell, Bell]]:
    name = f"test-{uuid.uuid4().hex}"
    listening, bell = Doorbell(name), Bell(name)
    yield listening, bell
    listening.close()
    bell.close()


def test_the_actor_pumps_by_itself_until_everything_is_acknowledged(tmp_path: Path) -> None:
    spool(tmp_path, "host", [f"h{n}" for n in range(5000)])
    output = Recording()
    actor = ProducerActor.start(Delivery(tmp_path, output, bulk_max_size=100))
    try:
        wait_until(lambda: figures(actor)["acknowledged"].get("host") == 5000, "5,000 events acknowledged")
        assert len(output.taken) == 5000
        assert figures(actor)["progress"] >= 50, "one pump per batch of 100, each counted as progress"
    finally:
        actor.stop(timeout=10)
    assert output.closed.is_set(), "the output is closed when the actor stops"


def test_a_ring_wakes_the_idle_actor_long_before_its_poll_interval(tmp_path: Path, doorbell) -> None:
    listening, bell = doorbell
    output = Recording()
    actor = ProducerActor.start(Delivery(tmp_path, output), listening, poll_interval=600.0)
    try:
        wait_until(lambda: figures(actor)["progress"] >= 1, "the first pump (an empty spool)")
        progress = figures(actor)["progress"]
        spool(tmp_path, "user", ["u1", "u2"])
        bell.ring()
        wait_until(lambda: figures(actor)["acknowledged"].get("user") == 2, "the rung events delivered", 10)
        assert figures(actor)["progress"] > progress
    finally:
        actor.stop(timeout=10)


def test_the_actor_answers_stats_while_it_waits_for_the_doorbell(tmp_path: Path, doorbell) -> None:
    listening, _ = doorbell
    actor = ProducerActor.start(Delivery(tmp_path, Recording()), listening, poll_interval=600.0)
    try:
        wait_until(lambda: figures(actor)["progress"] >= 1, "the first pump")
        for _ in range(5):  # the doorbell wait is in the waker thread: the mailbox stays open
            started = time.monotonic()
            assert actor.ask(Stats(), timeout=5)["progress"] == 1, "idle: no pump until rung or polled"
            assert time.monotonic() - started < 5
    finally:
        actor.stop(timeout=10)


def test_a_wedged_output_shows_as_a_heartbeat_whose_progress_stands_still(tmp_path: Path) -> None:
    spool(tmp_path, "host", ["h1"])
    gate = threading.Event()
    output = Recording(gate=gate)
    actor = ProducerActor.start(Delivery(tmp_path, output))
    heartbeat = ActorFigures(actor, Stats(), timeout=0.2)
    try:
        assert output.publishing.wait(20), "the first batch is being published (and hangs)"
        beats = [heartbeat()["progress"] for _ in range(5)]
        assert beats == [beats[0]] * 5 and beats[0] <= 1, "the supervisor sees no progress: a hang"
        gate.set()
        wait_until(lambda: heartbeat()["progress"] > beats[0], "progress again once the output answers")
        assert heartbeat()["acknowledged"] == {"host": 1}
    finally:
        gate.set()
        actor.stop(timeout=10)


def test_a_bug_in_a_pump_calls_on_crash_and_stops_the_actor(tmp_path: Path) -> None:
    spool(tmp_path, "host", ["h1"])
    crashes: list[BaseException] = []
    crashed = threading.Event()
    actor = ProducerActor.start(Delivery(tmp_path, Recording(fail_with=ZeroDivisionError("a bug"))),
                                on_crash=lambda error: (crashes.append(error), crashed.set()))
    assert crashed.wait(20) and isinstance(crashes[0], ZeroDivisionError)
    wait_until(lambda: not actor.is_alive(), "the actor stopped")


def test_drain_delivers_what_is_left_then_no_wake_up_pumps_again(tmp_path: Path, doorbell) -> None:
    listening, _ = doorbell
    output = Recording()
    actor = ProducerActor.start(Delivery(tmp_path, output), listening, poll_interval=600.0)
    try:
        wait_until(lambda: figures(actor)["progress"] >= 1, "the first pump")
        spool(tmp_path, "socket", ["s1", "s2", "s3"])  # spooled by a collector that stopped without ringing
        actor.ask(Drain(timeout=10), timeout=20)
        assert figures(actor)["acknowledged"] == {"socket": 3}
        progress = figures(actor)["progress"]
        actor.tell(Pump())  # a wake-up arriving after the drain
        assert figures(actor)["progress"] == progress, "draining: pumping has stopped"
    finally:
        actor.stop(timeout=10)


def test_drain_stops_at_the_first_failed_batch_and_keeps_it_spooled(tmp_path: Path) -> None:
    spool(tmp_path, "host", ["h1", "h2"])
    delivery = Delivery(tmp_path, FlakyForOneDataset(broken="host"), backoff_initial=60.0)
    started = time.monotonic()
    delivery.drain(timeout=30)
    assert time.monotonic() - started < 10, "the output is down: the drain gives up at once"
    assert delivery.stats.failed_batches == 1 and delivery.stats.acknowledged == {}
    delivery.close()  # releases the spool readers' locks for the next run
    again = Delivery(tmp_path, Recording())
    again.drain(timeout=10)
    assert again.stats.acknowledged == {"host": 2}, "delivered by the next run"
    again.close()
