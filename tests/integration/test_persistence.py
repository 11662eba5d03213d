"""What changed while the agent was down is reported once, at startup, marked as such; secrets never leak."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.agent_harness import Agent, wait_for
from tests.hostfs import SHADOW_HASH, add_user, make_hostfs, set_boot_time, set_hostname, set_password

FAST = "hostaudit.modules=[{module: system, datasets: [host, user], period: 200ms}]"


def actions(agent: Agent, action: str) -> list[dict]:
    return [e for e in agent.events() if e["event"]["action"] == action]


def wait_for_committed(agent: Agent, datasets: tuple[str, ...]) -> None:
    """Wait until each dataset committed the state behind every event delivered so far: a kill between a spool
    append and its state commit would (rightly) repeat those events after the restart."""
    for dataset in datasets:
        delivered = max(e["event"]["sequence"] for e in agent.events() if e["event"]["dataset"] == dataset)
        wait_for(lambda d=dataset, n=delivered: agent.committed_sequence(d) >= n, 5,
                 f"{dataset} state committed up to sequence {delivered}")


def kill_whole_agent(agent: Agent) -> None:
    os.killpg(agent.pid, signal.SIGKILL)
    agent.process.wait(10)


def test_downtime_changes_are_reported_once_marked_at_startup(agent_factory, tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="before", boot_time=1_700_000_000)
    overrides = (f"hostfs={hostfs}", FAST)
    first = agent_factory(overrides=overrides)
    first.wait_for_event(lambda e: e["event"]["action"] == "existing_user", 10, "the user state report")
    first.wait_for_event(lambda e: e["event"]["action"] == "host", 10, "the host state report")
    wait_for(lambda: len(actions(first, "existing_user")) == 2, 5, "both users in the state report")
    wait_for_committed(first, ("host", "user"))
    kill_whole_agent(first)

    set_hostname(hostfs, "after")
    set_boot_time(hostfs, 1_700_100_000)
    new_hash = "$6$newSALTnewsalt$" + "n" * 86
    add_user(hostfs, "mallory", 1001, new_hash)
    set_password(hostfs, "alice", "$6$otherSALTother$" + "p" * 86)

    second = agent_factory(overrides=overrides)
    for action in ("hostname_changed", "reboot", "user_added", "password_changed"):
        event = second.wait_for_event(lambda e, a=action: e["event"]["action"] == a, 10, action)
        assert event["system"]["audit"]["detected_at_startup"] is True, action
    assert actions(second, "user_added")[0]["user"]["name"] == "mallory"
    assert actions(second, "password_changed")[0]["user"]["name"] == "alice"
    assert len(actions(second, "existing_user")) == 2, "no new state report at a restart within state.period"
    assert len(actions(second, "host")) == 1
    sequences = [e["event"]["sequence"] for e in second.events() if e["event"]["dataset"] == "user"]
    assert sequences == sorted(set(sequences)), "event.sequence keeps increasing across restarts"
    assert second.terminate() == 0

    third = agent_factory(overrides=overrides)
    third.wait_for_role("user", 10)
    third.wait_for_role("host", 10)
    wait_for(lambda: "started user" in third.log().split("hostaudit 0.1.0 starting")[-1], 10, "third start")
    set_hostname(hostfs, "third")  # a fresh change proves the third run is collecting...
    third.wait_for_event(lambda e: e["event"]["action"] == "hostname_changed" and e["host"]["hostname"] == "third",
                         10, "the change made during the third run")
    for action in ("user_added", "password_changed", "reboot"):  # ...and that nothing old came again
        assert len(actions(third, action)) == 1, action
    assert len(actions(third, "hostname_changed")) == 2


def test_password_hashes_appear_nowhere(agent_factory, tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    agent = agent_factory(overrides=(f"hostfs={hostfs}", FAST, "logging.level=debug"))
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_user", 10, "the user state report")
    new_hash = "$6$freshSALTfresh$" + "f" * 86
    set_password(hostfs, "alice", new_hash)
    agent.wait_for_event(lambda e: e["event"]["action"] == "password_changed", 10, "password_changed")
    assert agent.terminate() == 0
    secrets = [SHADOW_HASH, new_hash, "saltsaltSALT", "freshSALTfresh"]
    places = [agent.log_path, *agent.output_dir.rglob("*"), *agent.data.rglob("*")]
    for place in places:
        if place.is_file():
            content = place.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"{secret[:12]}... found in {place}"
    assert any(p.name == "state.db" for p in places) and any(p.suffix == ".seg" for p in places)


def test_corrupt_state_store_is_moved_aside_and_the_agent_starts_from_a_fresh_baseline(agent_factory,
                                                                                      tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    first = agent_factory(overrides=(f"hostfs={hostfs}", FAST))
    first.wait_for_event(lambda e: e["event"]["action"] == "host", 10, "the host state report")
    assert first.terminate() == 0
    for leftover in first.data.glob("state.db-*"):
        leftover.unlink()
    (first.data / "state.db").write_bytes(b"\x00garbage, not SQLite" * 512)
    second = agent_factory(overrides=(f"hostfs={hostfs}", FAST))
    second.wait_for_log("fresh baseline", 10)
    wait_for(lambda: len(actions(second, "host")) == 2, 10, "a new host state report from the fresh baseline")
    assert list(second.data.glob("state.db.corrupt-*")), "the corrupt store is kept aside for inspection"
    assert second.process.poll() is None
