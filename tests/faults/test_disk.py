"""The disk under path.data: a small spool reclaims what was acknowledged, a full disk is a state, not a crash."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.agent_harness import Agent, wait_for
from tests.faults.support import ExecLoad, probe, ready

PROCESS_ONLY = "hostaudit.modules=[{module: system, datasets: [process], period: 1s}]"


def stats(agent: Agent) -> dict[str, Any]:
    port = int(re.search(r"monitoring endpoint on http://127\.0\.0\.1:(\d+)/stats", agent.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_small_spool_reclaims_acknowledged_bytes_and_never_stalls(agent_factory) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY, "queue.disk.max_size=2MiB", "http.enabled=true", "http.port=0"))
    ready(agent)
    peak = 0

    def through_the_spool() -> int:
        nonlocal peak
        peak = max(peak, directory_bytes(agent.data / "spool"))
        return directory_bytes(agent.output_dir) > 3 * 1024 * 1024

    with ExecLoad(rate=80):
        wait_for(through_the_spool, 90, "3 MiB of events through a spool of queue.disk.max_size 2 MiB",
                 interval=0.2)
    assert stats(agent)["datasets"]["process"]["spool_full"] is False
    assert "reach queue.disk.max_size" not in agent.log()
    assert peak < 2 * 1024 * 1024, "acknowledged segments are deleted"
    probe(agent, 10, "an exec after the load")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            os.write(fd, chunk[: 4096 if os.fstatvfs(fd).f_bavail < 32 else 65536])
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_full_disk_is_a_state_not_a_crash_and_delivery_resumes(agent_factory, small_tmpfs: Path) -> None:
    agent = agent_factory(overrides=(PROCESS_ONLY, f"path.data={small_tmpfs}", "http.enabled=true",
                                     "http.port=0"))
    ready(agent)
    pids = {role: agent.wait_for_role(role, 5) for role in ("process", "producer")}
    log_lines_before = len(agent.log().splitlines())
    ballast = fill(small_tmpfs)
    with ExecLoad(rate=50) as load:
        wait_for(lambda: load.count >= 400, 60, "400 execs on a full disk")
    assert {role: agent.role_pid(role) for role in pids} == pids, "nothing crashed or was restarted"
    new_lines = agent.log().splitlines()[log_lines_before:]
    problems = [line for line in new_lines if " WARNING " in line or " ERROR " in line]
    assert len(problems) <= 6, "one warning a minute per problem, not one per cycle:\n" + "\n".join(problems)
    assert "Traceback" not in agent.log()
    assert "must be an integer above" not in agent.log()
    dropped = stats(agent)["datasets"]["process"]["events_dropped"]
    ballast.unlink()
    probe(agent, 20, "an exec delivered once space is free again")
    sequences = sorted(e["event"]["sequence"] for e in agent.events() if e["event"]["dataset"] == "process")
    assert len(sequences) == len(set(sequences)), "no sequence reused"
    gaps = sequences[-1] - len(sequences)
    assert gaps >= dropped, "every dropped event left a gap in event.sequence"
    assert {role: agent.role_pid(role) for role in pids} == pids
