"""The process dataset through the whole agent: real processes, every short-lived exec, restarts without duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.agent_harness import Agent, wait_for

PROCESS_ONLY = "hostaudit.modules=[{module: system, datasets: [process], period: 1s}]"


def started_with(agent: Agent, marker: str) -> list[dict]:
    return [e for e in agent.events() if e["event"]["action"] in ("process_started", "existing_process")
            and marker in " ".join(e["process"].get("args", []))]


def test_spawned_process_is_started_and_stopped_with_its_details(agent_factory, tmp_path: Path) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY,))
    agent.wait_for_role("process", 10)
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_process", 15, "the process state report")
    marker = f"marker-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker], cwd=tmp_path,
                             stdin=subprocess.PIPE)
    try:
        started = agent.wait_for_event(lambda e: e["event"]["action"] == "process_started"
                                       and marker in e["process"].get("args", []), 10, "process_started")
        process = started["process"]
        assert process["pid"] == child.pid and process["parent"]["pid"] == os.getpid()
        assert process["executable"] == os.path.realpath(sys.executable)
        assert process["working_directory"] == str(tmp_path)
        assert started["user"]["id"] == str(os.getuid()) and started["user"]["name"] == "root"
        assert started["message"].startswith(f"Process {process['name']} (PID: {child.pid}) by user root STARTED")
    finally:
        child.stdin.close()
        child.wait(10)
    stopped = agent.wait_for_event(lambda e: e["event"]["action"] == "process_stopped"
                                   and e["process"]["pid"] == child.pid, 10, "process_stopped")
    assert stopped["process"]["exit_code"] == 0


def test_every_short_lived_process_is_reported_by_the_whole_pipeline(agent_factory) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY,))
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_process", 15, "the process state report")
    runs = 2000
    loop = subprocess.run(["bash", "-c", f"for i in $(seq {runs}); do /bin/true; done; echo $$"],
                          capture_output=True, text=True, timeout=120, check=True)
    shell = int(loop.stdout.strip())

    def children(action: str) -> set[int]:
        return {e["process"]["pid"] for e in agent.events()
                if e["event"]["action"] == action and e["process"].get("parent", {}).get("pid") == shell
                and e["process"].get("name") in (None, "true", "bash")}

    wait_for(lambda: len(children("process_started")) >= runs, 60,
             f"{runs} process_started events for the /bin/true children")
    wait_for(lambda: len(children("process_stopped")) >= runs, 30, f"{runs} process_stopped events")
    with_executable = [e for e in agent.events() if e["event"]["action"] == "process_started"
                       and e["process"].get("parent", {}).get("pid") == shell and e["process"].get("executable")]
    print(f"{len(with_executable)} of {runs} short-lived processes reported with their executable")
    assert len(with_executable) >= runs // 4


def test_restart_reports_only_real_changes(agent_factory, tmp_path: Path) -> None:
    overrides = (PROCESS_ONLY,)
    keeper_marker, ender_marker = f"keeper-{uuid.uuid4().hex}", f"ender-{uuid.uuid4().hex}"
    keeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", keeper_marker],
                              stdin=subprocess.PIPE)
    ender = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", ender_marker],
                             stdin=subprocess.PIPE)
    try:
        first = agent_factory(overrides=overrides)
        wait_for(lambda: started_with(first, keeper_marker) and started_with(first, ender_marker), 20,
                 "both processes reported by the first run")
        assert first.terminate() == 0
        ender.stdin.close()
        ender.wait(10)
        newcomer_marker = f"newcomer-{uuid.uuid4().hex}"
        newcomer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", newcomer_marker],
                                    stdin=subprocess.PIPE)
        second = Agent(tmp_path, None, overrides)  # same path.data and output file
        second.stderr_path = tmp_path / "second.stderr"
        second.start()
        try:  # the output file is shared with the first run: events are told apart by the markers
            wait_for(lambda: len(started_with(second, newcomer_marker)) == 1, 20, "the newcomer reported")
            stop = second.wait_for_event(lambda e: e["event"]["action"] == "process_stopped"
                                         and e["process"]["pid"] == ender.pid, 10, "the ender's stop")
            assert stop["system"]["audit"]["detected_at_startup"] is True
            assert len(started_with(second, keeper_marker)) == 1, \
                "the keeper, reported before the restart, is not reported again"
        finally:
            newcomer.stdin.close()
            newcomer.wait(10)
            second.kill_all()
    finally:
        for child in (keeper, ender):
            if child.poll() is None:
                child.stdin.close()
                child.wait(10)
