"""The process supervisor (actors/runtime/supervision.py) with real child processes: the pids a second stop signal
kills are kept current by the supervisor itself."""

from __future__ import annotations

import multiprocessing
import os
import signal
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
