"""Fault injection on the real agent: killed, stopped and duplicated processes; delivery always heals."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.agent_harness import REPO, wait_for
from tests.faults.support import (ALL_DATASETS, ExecLoad, assert_no_sequence_missing, output_contains, probe,
                                  ready, restart_to_delivery, run_marked, session_processes)

PROCESS_ONLY = "hostaudit.modules=[{module: system, datasets: [process], period: 1s}]"
FAST_RESTARTS = ("supervisor.max_restarts=1000", "supervisor.backoff.initial=100ms", "supervisor.backoff.max=1s")


def test_killed_producer_delivers_again_within_2_seconds_of_its_restart(agent_factory) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY, *FAST_RESTARTS))
    ready(agent)
    for attempt in range(3):
        victim = agent.wait_for_role("producer", 10)
        os.kill(victim, signal.SIGKILL)
        seconds = restart_to_delivery(agent, victim, timeout=5.0)
        assert seconds < 2.0, f"round {attempt + 1}: delivered {seconds:.2f} s after the producer's restart"
    probe(agent, 5, "an exec after the last restart")


def test_random_kills_under_load_lose_nothing_that_was_spooled(agent_factory, long_run: bool) -> None:
    rounds = 100 if long_run else 12
    agent = agent_factory(overrides=(ALL_DATASETS, *FAST_RESTARTS))
    ready(agent)
    chooser = random.Random()
    roles = ("host", "process", "socket", "user", "producer", "proc-connector")
    latencies: list[float] = []  # seconds from each producer restart to delivery
    with ExecLoad(rate=40):
        for attempt in range(rounds):
            role = chooser.choice(roles)
            victim = agent.wait_for_role(role, 15)
            time.sleep(chooser.uniform(0.0, 0.8))  # a random moment of the victim's work (fault injection)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue  # exited by itself meanwhile (a proc-connector goes with its collector)
            if role == "producer":
                latencies.append(restart_to_delivery(agent, victim, timeout=10.0))
            else:
                agent.wait_for_role(role, 15, not_pid=victim)
    probe(agent, 15, "an exec after the last round")
    print(f"producer restart -> delivery: {sorted(round(s, 2) for s in latencies)}")
    # Here other collectors restart around the producer and redo their scans and state reports on a loaded
    # machine, so the bound is looser; the 2 s bound is asserted with nothing else restarting, above.
    assert all(seconds < 5.0 for seconds in latencies), f"delivery within 5 s of each restart: {latencies}"
    assert_no_sequence_missing(agent, ("host", "user", "process", "socket"), 30)
    assert "must be an integer above" not in agent.log()
    assert agent.terminate(15) == 0


def test_stopped_producer_is_killed_as_hung_and_delivery_resumes(agent_factory) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY, "supervisor.hang_timeout=3s", *FAST_RESTARTS))
    ready(agent)
    victim = agent.wait_for_role("producer", 5)
    os.kill(victim, signal.SIGSTOP)
    marker = f"while-stopped-{uuid.uuid4().hex}"
    run_marked(marker)
    agent.wait_for_log("producer made no progress", 15)
    agent.wait_for_role("producer", 10, not_pid=victim)
    wait_for(lambda: output_contains(agent, marker), 10,
             f"the exec spooled while the producer was stopped; log:\n{agent.log()[-2000:]}")
    probe(agent, 5, "an exec after the hang kill")


def test_second_agent_on_the_same_path_data_exits_1_naming_the_holder(agent_factory, tmp_path: Path) -> None:
    first = agent_factory(overrides=(PROCESS_ONLY,))
    ready(first)
    second = agent_factory(overrides=(PROCESS_ONLY, f"path.data={first.data}"), workdir=tmp_path / "second")
    assert second.process.wait(15) == 1
    lines = [line for line in second.log().splitlines() if line.strip()]
    assert lines[-1] == (f"hostaudit: path.data {first.data} is in use by another hostaudit (pid {first.pid}); "
                         f"stop it or give this one another -E path.data=...")
    wait_for(lambda: not session_processes(second.pid), 5, "nothing of the second agent left running")
    probe(first, 10, "the first agent still delivering")


def test_http_port_in_use_stops_the_agent_with_exit_1_and_nothing_left_running(agent_factory) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        agent = agent_factory(overrides=(PROCESS_ONLY, "http.enabled=true", f"http.port={port}"))
        assert agent.process.wait(20) == 1
        assert f"http: cannot serve 127.0.0.1:{port}" in agent.log()
        assert "Traceback" not in agent.log()
        wait_for(lambda: not session_processes(agent.pid), 10, "no child of the agent left running")
    finally:
        taken.close()


def test_failed_dataset_is_retried_after_its_cool_down(agent_factory, tmp_path: Path) -> None:
    hang_file = tmp_path / "hang"
    hang_file.write_text("host\n")
    agent = agent_factory(overrides=(
        "hostaudit.modules=[{module: system, datasets: [host, process], period: 500ms}]",
        f"debug.hang_file={hang_file}", "supervisor.hang_timeout=1s", "supervisor.max_restarts=1",
        "supervisor.backoff.initial=100ms", "supervisor.failed_retry=2s"))
    agent.wait_for_log("host failed: 1 restarts", 20)
    agent.wait_for_log("trying it again in 2 s (supervisor.failed_retry)", 1)
    hang_file.unlink()
    agent.wait_for_log("host: retrying after its cool-down", 10)
    agent.wait_for_event(lambda e: e["event"]["dataset"] == "host", 10, "host events after the retry")


def test_sigterm_to_the_process_and_its_group_still_flushes_and_exits_0(tmp_path: Path) -> None:
    """GNU timeout signals the agent and then its process group: one stop request, not an exit at once."""
    data, out = tmp_path / "data", tmp_path / "out"
    command = ["timeout", "-s", "TERM", "6", sys.executable, "-m", "actors.cli", "run", "-E", f"path.data={data}",
               "-E", "output.console.enabled=false", "-E", "output.file.enabled=true", "-E", f"output.file.path={out}",
               "-E", PROCESS_ONLY]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=40)
    assert result.returncode == 124, result.stderr[-2000:]  # timeout's own code: it had to stop the agent
    assert "all processes stopped" in result.stderr, result.stderr[-3000:]
