"""The process dataset through the whole agent: real processes, every short-lived exec, restarts without duplicates."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
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

    def reported(action: str, timeout: float) -> None:
        try:
            wait_for(lambda: len(children(action)) >= runs, timeout, f"{runs} {action} events for the children")
        except AssertionError as error:  # say how far it got, and what the agent logged (losses, restarts)
            started = [e for e in agent.events() if e["event"]["action"] == action
                       and e["process"].get("parent", {}).get("pid") == shell]
            raise AssertionError(f"{error}: {len(children(action))} counted, {len(started)} with the shell as "
                                 f"parent; agent log:\n{agent.log()[-3000:]}") from None

    reported("process_started", 60)
    reported("process_stopped", 30)
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
        second.log_path = tmp_path / "second.stderr"
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


MIB = 1024 * 1024
BIG_BYTES = 200 * MIB
# Two 200 MiB executables through a 256 MiB burst at 4 MiB/s: the second takes ~36 s to hash, longer than the
# collector's default hang timeout (max(3 x period, 30 s)). Hashing in the collector's thread got it killed.
SLOW_HASHING = """\
hostaudit.modules:
- module: system
  datasets: [process]
  period: 1s
  state.period: 5s
  process.hash.max_file_size: 256 MiB
  process.hash.scan_rate_per_sec: 4 MiB
"""


def padded_executable(source: str, path: Path, size: int, tag: bytes) -> Path:
    """A copy of `source` padded to `size` bytes (a sparse tail: the ELF loader ignores what follows)."""
    shutil.copyfile(source, path)
    with path.open("ab") as handle:
        handle.write(tag)
    os.truncate(path, size)
    path.chmod(0o755)
    return path


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def stats(agent: Agent) -> dict:
    port = int(re.search(r"monitoring endpoint on http://127\.0\.0\.1:(\d+)/stats", agent.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def test_a_200_mib_executable_is_hashed_beside_the_collector_which_never_waits_for_it(agent_factory,
                                                                                       tmp_path: Path) -> None:
    sleep = os.path.realpath("/bin/sleep")
    big = [padded_executable(sleep, tmp_path / f"big-sleep-{index}", BIG_BYTES, b"hostaudit %d" % index)
           for index in range(2)]
    small = padded_executable(sleep, tmp_path / "small-sleep", os.path.getsize(sleep) + 1, b"s")  # a new file
    assert subprocess.run([str(big[0]), "0"], timeout=30).returncode == 0, "a padded executable still execs"
    config = tmp_path / "config"
    config.mkdir()
    agent = agent_factory(config=SLOW_HASHING, overrides=("http.enabled=true", "http.port=0"), workdir=config)
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_process", 30, "the process state report")
    agent.wait_for_log("monitoring endpoint on", 10)
    children: list[subprocess.Popen] = []

    def run(path: Path) -> tuple[subprocess.Popen, dict, float]:
        """Start `path`; return it, its process_started event and the seconds that event took to come out."""
        started_at = time.monotonic()
        child = subprocess.Popen([str(path), "600"])
        children.append(child)
        event = agent.wait_for_event(lambda e: e["event"]["action"] == "process_started"
                                     and e["process"]["pid"] == child.pid, 30, f"process_started of {path.name}")
        return child, event, time.monotonic() - started_at

    try:
        first, _, first_latency = run(big[0])
        second, second_started, second_latency = run(big[1])
        _, small_started, small_latency = run(small)  # while the second big file is being hashed, throttled
        print(f"process_started after {first_latency:.2f} s, {second_latency:.2f} s (200 MiB executables), "
              f"{small_latency:.2f} s (small, while the second is hashed)")
        assert first_latency < 5 and second_latency < 5 and small_latency < 5
        assert second_started["process"]["executable"] == str(big[1])
        assert "hash" not in second_started["process"], "36 s of hashing cannot have been waited for"
        assert small_started["process"]["hash"] == {"sha1": sha1_of(small)}, \
            "a small executable is hashed at once, even behind a 200 MiB one"

        expected = {first.pid: sha1_of(big[0]), second.pid: sha1_of(big[1])}

        def hashed_state() -> dict[int, str]:
            return {e["process"]["pid"]: e["process"]["hash"]["sha1"] for e in agent.events()
                    if e["event"]["action"] == "existing_process" and e["process"]["pid"] in expected
                    and "hash" in e["process"]}

        wait_for(lambda: hashed_state().keys() == expected.keys(), 150,
                 "both 200 MiB executables' hashes on their processes' state events")
        assert hashed_state() == expected
        second.kill()
        second.wait(10)
        stopped = agent.wait_for_event(lambda e: e["event"]["action"] == "process_stopped"
                                       and e["process"]["pid"] == second.pid, 10, "the stop of the second")
        assert stopped["process"]["hash"] == {"sha1": expected[second.pid]}
    finally:
        for child in children:
            child.kill()
            child.wait(10)
    process = stats(agent)["datasets"]["process"]
    assert process["restarts"] == 0 and process["up"] is True
    assert "no progress" not in agent.log() and "restart attempt" not in agent.log()


def test_a_stop_delivers_the_processes_that_ran_just_before_it(agent_factory) -> None:
    """SIGTERM right after a burst of short processes exited: their events, still held by the connector's reader
    or on their way to the collector, are spooled and delivered before the agent exits, not dropped."""
    agent = agent_factory(overrides=(PROCESS_ONLY,))
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_process", 15, "the process state report")
    runs = 20
    loop = subprocess.run(["bash", "-c", f"echo $$; for i in {{1..{runs}}}; do /bin/true; done"], check=True,
                          capture_output=True, text=True, timeout=30)
    shell = int(loop.stdout.strip())
    assert agent.terminate(timeout=30) == 0
    children = {e["process"]["pid"]: e["event"]["action"] for e in agent.events()
                if e["process"].get("parent", {}).get("pid") == shell}
    assert len(children) == runs and set(children.values()) == {"process_stopped"}, children
