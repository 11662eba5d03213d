"""Errors that must end a child process loudly (for the supervisor to restart it), never leave it idle."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from actors.runtime.collector import STREAM_BATCH_SECONDS, Progress, StreamItems, _CrashingTimer, _pump_stream
from tests.agent_harness import REPO


def test_a_timer_that_fails_crashes_the_process_instead_of_dying_silently() -> None:
    crashed = threading.Event()
    errors: list[BaseException] = []

    def on_crash(error: BaseException) -> None:
        errors.append(error)
        crashed.set()

    def tell(message: str) -> None:
        raise OverflowError("the actor's inbox cannot take it")

    timer = _CrashingTimer(0.0, 1.0, tell, "tick", on_crash)
    timer.start()
    assert crashed.wait(5), "the dead timer was reported"
    assert isinstance(errors[0], OverflowError)


def test_a_timer_fires_its_message_and_a_cancelled_one_does_not() -> None:
    fired: list[str] = []
    done = threading.Event()
    _CrashingTimer(0.01, 60.0, lambda message: (fired.append(message), done.set()), "tick", lambda error: None).start()
    assert done.wait(5) and fired == ["tick"]
    cancelled = _CrashingTimer(0.05, 60.0, fired.append, "late", lambda error: None)
    cancelled.start()
    cancelled.cancel()
    cancelled.join(5)
    assert fired == ["tick"]


def test_one_timer_thread_fires_at_its_period_once_the_last_firing_is_done_until_cancelled() -> None:
    fired = threading.Semaphore(0)
    fired_at: list[float] = []  # stamped by the timer's own thread as it fires

    def fire(message: str) -> None:
        fired_at.append(time.monotonic())
        fired.release()

    timer = _CrashingTimer(0.01, 0.2, fire, "tick", lambda error: None)
    timer.start()
    assert fired.acquire(timeout=5)
    assert not fired.acquire(timeout=0.6), "no firing while the last one's work is not done"
    timer.done()  # later than its due time: it fires at once
    assert fired.acquire(timeout=5)
    timer.done()  # in time: it fires at the next due time, a period after the last one was due
    assert fired.acquire(timeout=5)
    assert fired_at[2] - fired_at[1] >= 0.15, "not before its due time"
    timer.cancel()
    timer.join(5)
    assert not timer.is_alive() and not fired.acquire(timeout=0)


def test_an_exception_escaping_a_child_main_exits_1_with_one_logged_error() -> None:
    code = ("import logging, sys; logging.basicConfig(stream=sys.stderr);"
            "from actors.runtime.worker import exit_loudly_on_error;"
            "import threading; threading.Thread(target=threading.Event().wait, daemon=False).start();"  # a live thread
            "exit_loudly_on_error(lambda: 1 / 0, role='producer')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "producer: unexpected error; exiting for the supervisor to restart it" in result.stderr
    assert "ZeroDivisionError" in result.stderr


class _ScriptedStream:
    """Hands out the given reads in order, then nothing; `batch_seconds` as a stream may set it."""

    def __init__(self, reads: list[list[int]], batch_seconds: float | None) -> None:
        self.reads = reads
        self.batch_seconds = batch_seconds

    def read(self, timeout: float) -> list[int]:
        return self.reads.pop(0) if self.reads else []

    def lost(self) -> int:
        return 0


class _RecordingStop(threading.Event):
    """A stop event that records how long the pump waits on it (and does not wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return super().wait(0)


class _Collector:
    def __init__(self, stop: threading.Event, batches: int) -> None:
        self.batches: list[list[int]] = []
        self.stop, self.expected = stop, batches

    def ask(self, message: StreamItems) -> bool:
        self.batches.append(list(message.items))
        if len(self.batches) == self.expected:
            self.stop.set()
        return True


@pytest.mark.parametrize("batch_seconds, window, at_least", [(None, STREAM_BATCH_SECONDS, 0.0), (1.0, 1.0, 0.5),
                                                               (0.0, 0.0, 0.0)])
def test_the_pump_gathers_a_batch_for_the_streams_window_or_hands_out_each_read_at_once(
        batch_seconds: float | None, window: float, at_least: float) -> None:
    stop = _RecordingStop()
    collector = _Collector(stop, batches=2)
    stream = _ScriptedStream([[1, 2], [3], [], [4]], batch_seconds)
    _pump_stream(stream, collector, stop, Progress())  # type: ignore[arg-type]
    # The first read's items and what a read without waiting adds make one batch; the next read starts another.
    assert collector.batches == [[1, 2, 3], [4]]
    # It sleeps out the rest of the window once a batch (not at all for a stream that batches itself).
    assert len(stop.waits) == 2 and all(at_least <= wait <= window + 1e-6 for wait in stop.waits)
