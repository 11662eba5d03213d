"""Errors that must end a child process loudly (for the supervisor to restart it), never leave it idle."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from actors.runtime.collector import _CrashingTimer
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
    timer = _CrashingTimer(0.01, 0.2, lambda message: fired.release(), "tick", lambda error: None)
    timer.start()
    assert fired.acquire(timeout=5)
    assert not fired.acquire(timeout=0.6), "no firing while the last one's work is not done"
    timer.done()  # later than its due time: it fires at once
    assert fired.acquire(timeout=5)
    done_at = time.monotonic()
    timer.done()  # in time: it fires at the next due time, a period after the last one was due
    assert fired.acquire(timeout=5)
    assert time.monotonic() - done_at >= 0.15, "not before its due time"
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
