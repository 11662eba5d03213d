"""What the fault-injection tests share: a steady exec load, the sequences delivered, the agent's session."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from typing import Any

import psutil

from tests.agent_harness import Agent, wait_for

ROLES = ("host", "process", "socket", "user", "producer")
ALL_DATASETS = "hostaudit.modules=[{module: system, datasets: [host, user, process, socket], period: 1s}]"


class ExecLoad:
    """Runs `/bin/true <marker>` about `rate` times a second in a thread until stopped (bounded in time)."""

    def __init__(self, rate: float = 50.0, limit_seconds: float = 600.0) -> None:
        self.rate, self.limit_seconds = rate, limit_seconds
        self.marker = f"load-{uuid.uuid4().hex[:12]}"
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exec-load", daemon=True)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        deadline = time.monotonic() + self.limit_seconds
        while not self._stop.wait(interval) and time.monotonic() < deadline:
            subprocess.run(["/bin/true", self.marker], check=False)
            self.count += 1

    def __enter__(self) -> "ExecLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def ready(agent: Agent, timeout: float = 30) -> None:
    """Wait until the process dataset has reported its state (it is subscribed to exec notifications), and one
    exec run after that is delivered."""
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_process", timeout, "the process state report")
    probe(agent, 10, "a first exec delivered")


def run_marked(marker: str) -> None:
    """Run a process with `marker` in its arguments that lives 0.2 s, so its executable and arguments are read
    at exec time for certain (a /bin/true that exits within a millisecond may, rarely, be reported without
    them: a capture limit, not what the fault tests are about)."""
    subprocess.run(["/bin/sh", "-c", "sleep 0.2", marker], check=True)


def probe(agent: Agent, timeout: float, what: str) -> float:
    """Run one uniquely marked `/bin/true` and wait until its process_started event is delivered; return when
    it was run (monotonic), after the wait succeeded."""
    marker = f"probe-{uuid.uuid4().hex}"
    started = time.monotonic()
    run_marked(marker)
    # process_changed_image too: on a loaded machine a poll can catch the forked child before its exec (still the
    # test's python), report it started, and the exec then changes its image.
    agent.wait_for_event(lambda e: e["event"]["action"] in ("process_started", "process_changed_image")
                         and marker in e.get("process", {}).get("args", []), timeout, what)
    return started


def output_contains(agent: Agent, marker: str) -> bool:
    """True once `marker` is in the agent's output files: a byte search, cheap enough to poll on a loaded
    machine (parsing every event at each poll would measure the test, not the agent)."""
    needle = marker.encode()
    for path in agent.output_dir.glob("*.ndjson*"):
        try:
            if needle in path.read_bytes():
                return True
        except FileNotFoundError:
            continue  # rotated away meanwhile
    return False


def restart_to_delivery(agent: Agent, victim: int, timeout: float) -> float:
    """After the producer `victim` was killed: start a marked process at once (spooled while no producer
    runs), wait for the new producer, and return the seconds from its start until the marked event is in the
    output."""
    marker = f"restart-{uuid.uuid4().hex}"
    marked = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2", marker])
    agent.wait_for_role("producer", 15, not_pid=victim)
    restarted = time.monotonic()
    wait_for(lambda: output_contains(agent, marker), timeout,
             f"the marked exec delivered after the producer's restart; log:\n{agent.log()[-2000:]}", interval=0.02)
    marked.wait(10)
    return time.monotonic() - restarted


def delivered_sequences(agent: Agent, dataset: str) -> set[int]:
    return {e["event"]["sequence"] for e in agent.events() if e["event"]["dataset"] == dataset}


def assert_no_sequence_missing(agent: Agent, datasets: tuple[str, ...], timeout: float) -> None:
    """Every event a dataset committed as spooled (sequences 1..committed) reaches the output."""
    for dataset in datasets:
        committed = agent.committed_sequence(dataset)
        assert committed > 0, f"{dataset} committed nothing"

        def missing() -> set[int]:
            return set(range(1, committed + 1)) - delivered_sequences(agent, dataset)

        wait_for(lambda: not missing(), timeout,
                 f"every {dataset} sequence up to {committed} delivered (missing e.g. {sorted(missing())[:10]}); "
                 f"log:\n{agent.log()[-3000:]}")


def session_processes(session: int) -> list[psutil.Process]:
    """Live processes of a session (the harness starts each agent in its own session)."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return found
