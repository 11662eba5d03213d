"""The login dataset through the whole agent on a synthetic hostfs: history at the first start, a record written
while the agent runs delivered within about a second (the period is a minute), no duplicates across a restart
or a rotation, and a logout after a restart paired with its login from before."""

from __future__ import annotations

import gzip
import os
import statistics
import time
from pathlib import Path

from tests import utmp_files as u
from tests.agent_harness import Agent, wait_for
from tests.hostfs import make_hostfs

LOGIN_ONLY = "hostaudit.modules=[{module: system, datasets: [login], period: 1m}]"
T0 = 1_700_000_000.0


def host_root(tmp_path: Path) -> Path:
    root = make_hostfs(tmp_path / "hostfs")
    u.append(root / "var/log/wtmp", u.boot(T0), u.login("alice", "pts/0", 4242, T0 + 10, host="laptop.example.com",
                                                         ip="192.0.2.10"))
    u.append(root / "var/log/btmp", u.failed("mallory", "ssh:notty", 5151, T0 + 20, ip="203.0.113.66"))
    return root


def logins(agent: Agent) -> list[dict]:
    return [event for event in agent.events() if event["event"]["dataset"] == "login"]


def keys(events: list[dict]) -> list[tuple[str, str, str]]:
    return [(event["event"]["action"], event["@timestamp"], event["message"]) for event in events]


def test_history_at_start_then_each_new_record_within_a_second(agent_factory, tmp_path: Path) -> None:
    root = host_root(tmp_path)
    agent = agent_factory(overrides=(f"hostfs={root}", LOGIN_ONLY))
    history = wait_for(lambda: len(logins(agent)) >= 3 and logins(agent), 20, "the history of wtmp and btmp")
    assert [event["event"]["action"] for event in history] == ["boot", "user_login", "user_login"]
    assert all(event["system"]["audit"]["detected_at_startup"] is True for event in history)
    assert history[2]["event"]["outcome"] == "failure" and history[2]["source"]["ip"] == "203.0.113.66"
    latencies = []
    for index in range(5):
        pid = 7000 + index
        written = time.monotonic()
        u.append(root / "var/log/wtmp", u.login("root", f"tty{index + 1}", pid, time.time(), host="", ip=None))
        event = agent.wait_for_event(lambda e: e.get("process", {}).get("pid") == pid, 5,
                                     f"the login of pid {pid}, with period 1m")
        latencies.append(time.monotonic() - written)
        assert event["message"] == f"Login by user root (UID: 0) on tty{index + 1} (PID: {pid}) from  (IP: <nil>)"
        assert "detected_at_startup" not in event["system"]["audit"]
        assert "source" not in event, "a local login has no source.ip"
    print(f"write -> output file: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s")
    assert statistics.median(latencies) < 2.0


def test_a_restart_sends_nothing_twice_and_pairs_a_logout_with_its_earlier_login(agent_factory,
                                                                                  tmp_path: Path) -> None:
    root = host_root(tmp_path)
    first = agent_factory(overrides=(f"hostfs={root}", LOGIN_ONLY))
    wait_for(lambda: len(logins(first)) >= 3, 20, "the history")
    wait_for(lambda: first.committed_sequence("login") >= 3, 10, "the cursors committed")
    assert first.terminate() == 0
    u.append(root / "var/log/wtmp", u.logout("pts/0", 4242, T0 + 100), u.login("bob", "pts/1", 4343, T0 + 110))
    second = agent_factory(overrides=(f"hostfs={root}", LOGIN_ONLY))  # the same path.data and output files
    logout = second.wait_for_event(lambda e: e["event"]["action"] == "user_logout", 20,
                                   "the logout written while the agent was down")
    assert logout["user"]["name"] == "alice" and logout["source"]["ip"] == "192.0.2.10", \
        "the session of the login read before the restart"
    assert logout["system"]["audit"]["detected_at_startup"] is True
    second.wait_for_event(lambda e: e.get("user", {}).get("name") == "bob", 10, "bob's login")
    events = keys(logins(second))
    assert len(events) == len(set(events)) == 5, events
    sequences = [event["event"]["sequence"] for event in logins(second)]
    assert sequences == list(range(1, 6)), "one sequence across the restart, no gap, no repeat"


def test_a_compressed_rotation_while_running_repeats_nothing(agent_factory, tmp_path: Path) -> None:
    root = host_root(tmp_path)
    agent = agent_factory(overrides=(f"hostfs={root}", LOGIN_ONLY))
    wait_for(lambda: len(logins(agent)) >= 3, 20, "the history")
    log = root / "var/log"
    os.rename(log / "wtmp", log / "wtmp.1")  # logrotate: rename, create, compress, remove
    u.append(log / "wtmp", u.logout("pts/0", 4242, T0 + 100))
    (log / "wtmp.1.gz").write_bytes(gzip.compress((log / "wtmp.1").read_bytes()))
    os.remove(log / "wtmp.1")
    logout = agent.wait_for_event(lambda e: e["event"]["action"] == "user_logout", 5, "the logout in the new wtmp")
    assert logout["user"]["name"] == "alice"
    u.append(log / "wtmp", u.login("carol", "pts/2", 4444, T0 + 120))
    agent.wait_for_event(lambda e: e.get("user", {}).get("name") == "carol", 5, "a login after the rotation")
    events = keys(logins(agent))
    assert len(events) == len(set(events)) == 5, events
