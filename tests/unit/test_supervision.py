"""The process supervisor (actors/runtime/supervision.py) with real child processes: the pids a second stop signal
kills are kept current by the supervisor itself; a child that stopped cleanly just before its supervisor heard
of the stop is not restarted."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from actors.runtime.supervision import Child, ProcessSupervisor, RestartSettings, Shutdown, Status, Wakeup
from tests.agent_harness import wait_for

RESTART_AT_ONCE = RestartSettings(max_restarts=5, max_restarts_window=60.0, backoff_initial=0.05,
                                  backoff_max=0.05, failed_retry=60.0)


def beat_forever(spec: Any, heartbeat: Connection) -> None:
    """A child that sends a heartbeat (with progress) every 0.1 s until killed."""
    progress = 0
    while True:
        progress += 1
        heartbeat.send({"progress": progress})
        time.sleep(0.1)


class TwoChildren(ProcessSupervisor):
    def __init__(self, known_pids: list[int], wakeup: Wakeup) -> None:
        super().__init__(RESTART_AT_ONCE, multiprocessing.get_context("spawn"), known_pids=known_pids,
                         wakeup=wakeup)
        for name in ("one", "two"):
            self.children[name] = Child(name, beat_forever, None, hang_timeout=60.0)


def test_the_pids_a_second_signal_kills_follow_every_start_and_restart() -> None:
    known: list[int] = []
    wakeup = Wakeup()
    supervisor = TwoChildren.start(known, wakeup)
    try:
        def pids() -> dict[str, int]:
            return {name: child["pid"] for name, child in wakeup.ask(supervisor, Status(), 5).items()
                    if child["alive"]}

        first = wait_for(lambda: len(pids()) == 2 and pids(), 30, "both children started")
        assert sorted(known) == sorted(first.values())
        os.kill(first["one"], signal.SIGKILL)
        restarted = wait_for(lambda: (now := pids()).get("one") not in (None, first["one"]) and now, 30,
                             "the killed child restarted")
        assert sorted(known) == sorted(restarted.values()) and first["one"] not in known
    finally:
        wakeup.ask(supervisor, Shutdown(), 30)
        supervisor.stop()


def stop_once_told(spec: Any, heartbeat: Connection) -> None:
    """A child that exits 0 as soon as the file `spec` exists (as a child does on SIGTERM)."""
    while not os.path.exists(spec):
        heartbeat.send({"progress": time.monotonic()})
        time.sleep(0.05)


class OneStoppingChild(ProcessSupervisor):
    def __init__(self, flag: str, stop_requested: threading.Event, wakeup: Wakeup) -> None:
        super().__init__(RESTART_AT_ONCE, multiprocessing.get_context("spawn"), stop_requested=stop_requested,
                         wakeup=wakeup)
        self.children["one"] = Child("one", stop_once_told, flag, hang_timeout=60.0)


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def run_clean_exit(tmp_path: Any, stop_after_exit: bool) -> dict[str, Any]:
    """Start one child, let it exit 0, maybe request the stop right after; return its status once decided."""
    flag, stop_requested, wakeup = str(tmp_path / "stop"), threading.Event(), Wakeup()
    supervisor = OneStoppingChild.start(flag, stop_requested, wakeup)
    try:
        first = wait_for(lambda: (one := wakeup.ask(supervisor, Status(), 5)["one"])["alive"] and one, 30,
                         "the child started")
        open(flag, "w").close()
        wait_for(lambda: gone_or_zombie(first["pid"]), 30, "the child exited")
        if stop_after_exit:
            stop_requested.set()  # what the main thread's signal handler does, a moment after the child's exit
            return wakeup.ask(supervisor, Status(), 30)["one"]
        os.unlink(flag)
        return wait_for(lambda: (one := wakeup.ask(supervisor, Status(), 5)["one"])["alive"] and one, 30,
                        "the child restarted")
    finally:
        wakeup.ask(supervisor, Shutdown(), 30)
        supervisor.stop()


def test_a_child_stopped_by_the_agents_own_stop_signal_is_not_restarted(tmp_path: Any) -> None:
    status = run_clean_exit(tmp_path, stop_after_exit=True)
    assert status["restarts"] == 0 and not status["alive"]


def test_a_child_that_stops_on_its_own_is_still_restarted(tmp_path: Any) -> None:
    status = run_clean_exit(tmp_path, stop_after_exit=False)
    assert status["restarts"] == 1
