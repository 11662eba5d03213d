"""The collector's cycle: spool before commit, state reports by persisted time, backpressure by catching up."""

from __future__ import annotations

import json
from pathlib import Path

from actors.runtime.collector import DatasetRunner
from actors.datasets import DatasetContext
from actors.datasets.host.dataset import create
from actors.runtime.spool import SpoolReader, SpoolWriter
from actors.runtime.state import StateStore
from tests.hostfs import make_hostfs, set_hostname


def runner(tmp_path: Path, hostfs: Path, spool_max_bytes: int = 1 << 30, state_period: float = 3600.0,
           routing_fields: frozenset[str] = frozenset()) -> DatasetRunner:
    data = tmp_path / "data"
    return DatasetRunner(create(DatasetContext(hostfs=hostfs)), state_period, StateStore(data / "state.db"),
                         SpoolWriter(data / "spool" / "host"), data / "spool", spool_max_bytes,
                         common=lambda: {"agent": {"type": "hostaudit"}}, routing_fields=routing_fields)


def spooled(tmp_path: Path) -> list[dict]:
    reader = SpoolReader(tmp_path / "data" / "spool" / "host")
    return [json.loads(record.payload) for record in reader.read(10_000, 1 << 30)]


def test_first_cycle_reports_state_and_commits_after_spooling(tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    first = runner(tmp_path, hostfs)
    assert first.cycle().events == 1
    [state] = spooled(tmp_path)
    assert state["event"]["action"] == "host" and state["event"]["sequence"] == 1
    committed = StateStore(tmp_path / "data" / "state.db").load("host")
    assert committed.sequence == 1 and committed.snapshot["hostname"] == "testhost"


def test_restart_reports_downtime_changes_marked_and_no_new_state_within_state_period(tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    runner(tmp_path, hostfs).cycle()
    set_hostname(hostfs, "renamed")
    restarted = runner(tmp_path, hostfs)
    assert restarted.cycle().events == 1
    events = spooled(tmp_path)
    assert [e["event"]["action"] for e in events] == ["host", "hostname_changed"]
    assert events[1]["system"]["audit"]["detected_at_startup"] is True
    assert events[1]["event"]["sequence"] == 2
    assert restarted.cycle().events == 0, "the next cycle is an ordinary one: nothing new"


def test_full_spool_holds_changes_and_the_next_cycle_catches_up(tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    blocked = runner(tmp_path, hostfs, spool_max_bytes=1)  # already full after the first state event...
    blocked.cycle()
    set_hostname(hostfs, "one")
    result = blocked.cycle()
    assert result.blocked and result.events == 0
    set_hostname(hostfs, "two")
    assert blocked.cycle().blocked
    blocked.spool_max_bytes = 1 << 30  # ...until the output catches up
    assert blocked.cycle().events == 1
    change = spooled(tmp_path)[-1]
    assert change["event"]["action"] == "hostname_changed" and change["host"]["hostname"] == "two"
    assert change["system"]["audit"]["changes"]["previous"]["host"]["hostname"] == "testhost", \
        "reported late against the last committed state, not lost"


def test_each_event_is_spooled_with_the_values_of_the_fields_the_output_routes_by(tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs")
    fields = frozenset({"event.dataset", "host.hostname", "event.sequence", "agent", "no.such"})
    collector = runner(tmp_path, hostfs, routing_fields=fields)
    collector.cycle()
    set_hostname(hostfs, "renamed")
    collector.cycle()
    with SpoolReader(tmp_path / "data" / "spool" / "host") as reader:
        records = reader.read(100, 1 << 30)
    assert [dict(record.routing or {}) for record in records] == [
        {"event.dataset": "host", "host.hostname": hostname, "event.sequence": str(sequence),
         "agent": "{'type': 'hostaudit'}", "no.such": None}
        for sequence, hostname in ((1, "testhost"), (2, "renamed"))]
    for record in records:  # the values are those of the spooled event itself
        document = json.loads(record.payload)
        assert record.routing is not None and record.routing["host.hostname"] == document["host"]["hostname"]


def test_with_no_routing_fields_the_records_carry_an_empty_routing_section(tmp_path: Path) -> None:
    runner(tmp_path, make_hostfs(tmp_path / "hostfs")).cycle()
    with SpoolReader(tmp_path / "data" / "spool" / "host") as reader:
        (record,) = reader.read(100, 1 << 30)
    assert record.routing == {}, "recorded, but no field: an output routing by a field parses the event"
