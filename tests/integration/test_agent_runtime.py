"""The whole agent as a subprocess: events reach the file output, children are supervised, SIGTERM flushes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.agent_harness import wait_for
from tests.hostfs import make_hostfs, set_hostname


def is_host_state(event: dict) -> bool:
    return event["event"]["dataset"] == "host" and event["event"]["action"] == "host"


def test_host_state_event_reaches_file_output_within_5_seconds(agent_factory) -> None:
    agent = agent_factory()
    started = time.monotonic()
    event = agent.wait_for_event(is_host_state, 5, "a host state event")
    assert time.monotonic() - started < 5
    assert event["event"]["kind"] == "state"
    assert event["host"]["hostname"] == open("/proc/sys/kernel/hostname").read().strip().lower()
    assert event["agent"]["type"] == "hostaudit"
    assert event["event"]["sequence"] >= 1
    assert event["system"]["audit"]["report"]["id"]


def test_every_process_shows_its_role(agent_factory) -> None:
    agent = agent_factory()
    agent.wait_for_role("host", 10)
    agent.wait_for_role("producer", 10)
    assert psutil.Process(agent.pid).cmdline()[0] == "hostaudit: supervisor"


def test_hostname_change_in_hostfs_is_reported_within_two_periods(agent_factory, tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="before")
    agent = agent_factory(overrides=(f"hostfs={hostfs}", "-E"[:0] + "hostaudit.modules=[{module: system, datasets: [host], period: 1s}]"))
    agent.wait_for_event(is_host_state, 10, "the first host state")
    set_hostname(hostfs, "after")
    changed_at = time.monotonic()
    event = agent.wait_for_event(lambda e: e["event"]["action"] == "hostname_changed", 2.5,
                                 "hostname_changed within two periods")
    assert time.monotonic() - changed_at < 2.5
    assert event["host"]["hostname"] == "after"
    assert event["system"]["audit"]["changes"]["previous"]["host"]["hostname"] == "before"
    assert event["message"].startswith("Hostname changed to after")


def test_killed_collector_is_restarted_logged_and_events_continue(agent_factory, tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="one")
    agent = agent_factory(overrides=(f"hostfs={hostfs}",
                                     "hostaudit.modules=[{module: system, datasets: [host], period: 500ms}]"))
    agent.wait_for_event(is_host_state, 10, "the first host state")
    victim = agent.wait_for_role("host", 5)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    replacement = agent.wait_for_role("host", 3, not_pid=victim)
    assert time.monotonic() - killed_at < 3
    assert replacement != victim
    agent.wait_for_log("host exited (killed by SIGKILL); restart attempt 1", 3)
    set_hostname(hostfs, "two")
    agent.wait_for_event(lambda e: e["event"]["action"] == "hostname_changed" and e["host"]["hostname"] == "two",
                         10, "events after the restart")


def test_hung_collector_is_restarted(agent_factory, tmp_path: Path) -> None:
    hang_file = tmp_path / "hang"
    agent = agent_factory(overrides=(f"debug.hang_file={hang_file}", "supervisor.hang_timeout=2s",
                                     "hostaudit.modules=[{module: system, datasets: [host], period: 500ms}]"))
    agent.wait_for_event(is_host_state, 10, "the first host state")
    first = agent.wait_for_role("host", 5)
    hang_file.write_text("host\n")
    agent.wait_for_log("host made no progress", 8)
    hang_file.unlink()
    agent.wait_for_role("host", 10, not_pid=first)
    agent.wait_for_log("host exited (hung, killed by SIGKILL); restart attempt 1", 5)


def test_restart_intensity_exceeded_marks_dataset_failed_and_agent_runs_on(agent_factory, tmp_path: Path) -> None:
    hang_file = tmp_path / "hang"
    hang_file.write_text("host\n")
    agent = agent_factory(overrides=(f"debug.hang_file={hang_file}", "supervisor.hang_timeout=1s",
                                     "supervisor.max_restarts=2", "supervisor.backoff.initial=200ms",
                                     "hostaudit.modules=[{module: system, datasets: [host], period: 500ms}]"))
    producer = agent.wait_for_role("producer", 10)
    agent.wait_for_log("host failed: 2 restarts within 60 s", 30)
    assert agent.process.poll() is None, "the agent must keep running when one dataset failed"
    assert agent.role_pid("producer") == producer, "the rest runs on, never restarted by another's failure"
    assert agent.role_pid("host") is None


def test_sigterm_flushes_every_event_and_exits_zero(agent_factory, tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="h0")
    agent = agent_factory(overrides=(f"hostfs={hostfs}",
                                     "hostaudit.modules=[{module: system, datasets: [host], period: 200ms}]"))
    agent.wait_for_event(is_host_state, 10, "the first host state")
    for index in range(1, 6):
        set_hostname(hostfs, f"h{index}")
        agent.wait_for_event(lambda e, i=index: e["host"]["hostname"] == f"h{i}", 5, f"hostname h{index}")
    spooled = agent.committed_sequence()
    set_hostname(hostfs, "last")
    wait_for(lambda: agent.committed_sequence() > spooled, 5, "the last change spooled (maybe not yet output)")
    started = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 10
    events = [e for e in agent.events() if e["event"]["dataset"] == "host"]
    sequences = sorted(e["event"]["sequence"] for e in events)
    assert sequences == list(range(1, len(sequences) + 1)), "every spooled event reached the file, in order"
    spool = agent.data / "spool" / "host"
    from actors.runtime.spool import SpoolReader
    assert not SpoolReader(spool).has_pending(), "nothing left unacknowledged in the spool"


def test_monitoring_endpoint_serves_stats_and_prometheus_metrics(agent_factory) -> None:
    import json
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = agent_factory(overrides=("http.enabled=true", f"http.port={port}"))
    agent.wait_for_event(is_host_state, 10, "a host state event")

    def acknowledged() -> dict | None:
        try:
            stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5))
        except OSError:
            return None
        host = stats["datasets"]["host"]
        return stats if host["events_acknowledged"] >= 1 and host["events_emitted"] >= 1 else None

    # The figures come with each child's heartbeat: every 5 s at the default hang timeouts.
    stats = wait_for(acknowledged, 20, "/stats showing the host event emitted and acknowledged")
    assert stats["datasets"]["host"]["up"] is True and stats["output"]["events_dropped"] == 0
    assert stats["spool"]["bytes"] > 0
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'hostaudit_events_acknowledged_total{dataset="host"}' in metrics
    assert "# TYPE hostaudit_oldest_unacknowledged_age_seconds gauge" in metrics


def test_sigterm_to_the_whole_process_group_stops_cleanly(agent_factory) -> None:
    """A service manager (systemd's default KillMode) signals every process of the agent at once."""
    agent = agent_factory()
    agent.wait_for_event(is_host_state, 10, "a host state event")
    os.killpg(agent.pid, signal.SIGTERM)
    assert agent.process.wait(10) == 0
    log = agent.log()
    assert "restart attempt" not in log, "no child is restarted while the agent stops"
    assert "exit code 255" not in log, "the forkserver survived the signal, so every child's exit was seen"


def test_no_process_of_the_agent_loads_pydantic_and_options_still_take_effect(agent_factory, tmp_path: Path) -> None:
    # The command line checks every option with pydantic; the processes that run for months get them as plain
    # attributes (actors.datasets.CheckedOptions) and never load it (about 13 MiB of the agent's memory).
    marker = tmp_path / "marker-tool"
    marker.write_bytes(Path("/bin/sleep").read_bytes())
    marker.chmod(0o755)
    agent = agent_factory(overrides=(
        "hostaudit.modules=[{module: system, datasets: [host, login, package, process, socket, user], period: 1s, "
        "process.hash.hash_types: [sha256]}]",))
    for role in ("host", "login", "package", "process", "socket", "user", "producer"):
        agent.wait_for_role(role, 20)
    sleeper = subprocess.Popen([str(marker), "30"])
    try:
        started = agent.wait_for_event(lambda event: event["event"]["dataset"] == "process"
                                       and event["process"]["pid"] == sleeper.pid, 20, "the marker's start")
        assert set(started["process"]["hash"]) == {"sha256"}  # the non-default option reached the collector
    finally:
        sleeper.kill()
        sleeper.wait()
    tree = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
    assert len(tree) >= 9  # supervisor, forkserver, producer, six collectors, the proc-connector reader
    for process in tree:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "pydantic" not in maps, f"{process.cmdline()[0]} (pid {process.pid}) loaded pydantic"
