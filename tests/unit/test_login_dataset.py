"""The login dataset on synthetic wtmp/btmp files under a hostfs root, and on the machine's own wtmp: Auditbeat's
events and messages, exactly-once reading across restarts, rotations and rewrites, and bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Sequence

import pytest

from actors.datasets import BUILT_DATASETS, PLANNED_DATASETS, DatasetContext
from actors.datasets.login import dataset as login_dataset
from actors.datasets.login import files, utmp
from actors.datasets.login.options import SCHEMA, LoginOptions, parse_options
from actors.datasets.login.watch import FILES_CHANGED, FilesWatch
from actors.ecs import assert_ecs
from actors.event import Event
from actors.options import ConfigError
from actors.runtime.collector import DatasetRunner
from actors.runtime.spool import SpoolReader, SpoolWriter
from actors.runtime.state import StateStore
from tests import utmp_files as u
from tests.agent_harness import wait_for
from tests.hostfs import make_hostfs
from tests.sample_support import EVENT_FIELDS, checked_sample, sample_common

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host root with /etc/passwd (root 0, alice 1000), an empty /var/log/btmp and no wtmp yet."""
    host = make_hostfs(tmp_path / "hostfs")
    (host / "var/log").mkdir(parents=True)
    (host / "var/log/btmp").touch()
    return host


def wtmp(root: Path, name: str = "wtmp") -> Path:
    return root / "var/log" / name


def btmp(root: Path, name: str = "btmp") -> Path:
    return root / "var/log" / name


def make(root: Path, **options: Any) -> login_dataset.LoginDataset:
    return login_dataset.create(DatasetContext(hostfs=root, options=options))


def checked(events: Sequence[Event]) -> list[Event]:
    """The events, after asserting each one becomes a valid ECS document."""
    for event in events:
        assert_ecs(event.stamped(1).to_document({}), EVENT_FIELDS)
    return list(events)


def persisted(snapshot: Any) -> Any:
    """The snapshot as the state store gives it back after a restart (JSON round trip)."""
    return json.loads(json.dumps(snapshot))


def read_all(dataset: login_dataset.LoginDataset, snapshot: Any, passes: int = 1000) -> tuple[Any, list[Event]]:
    """Advance until no backlog is left; the final snapshot (persisted form) and every event."""
    events: list[Event] = []
    for _ in range(passes):
        snapshot, new = dataset.advance(snapshot)
        events += checked(new)
        snapshot = persisted(snapshot)
        if not dataset.more.is_set():
            return snapshot, events
    raise AssertionError(f"still a backlog after {passes} passes")


def user_processes(data: bytes) -> int:
    """How many USER_PROCESS records `data` holds (read with the test's own layout)."""
    return sum(u.UTMP.unpack_from(data, offset)[0] == u.USER_PROCESS for offset in range(0, len(data), 384))


def summary(events: Sequence[Event]) -> list[tuple[str, str]]:
    return [(event.action, event.message) for event in events]


def audit(event: Event) -> dict[str, Any]:
    return event.fields["system"]["audit"]


def replace_file(path: Path, content: bytes) -> None:
    """Put a new file (new inode) in place of `path`, as an editor or `utmpdump -r` does."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


ALICE_LOGIN = u.login("alice", "pts/0", 4242, T0 + 10.5, host="laptop.example.com", ip="192.0.2.10")
BOB_LOGIN = u.login("bob", "pts/1", 4343, T0 + 20, host="2001:db8::7", ip="2001:db8::7")
ALICE_LOGOUT = u.logout("pts/0", 4242, T0 + 30)
ALICE_LOGIN_MESSAGE = "Login by user alice (UID: 1000) on pts/0 (PID: 4242) from laptop.example.com (IP: 192.0.2.10)"


# --------------------------------------------------------------------------------------------------------
# Records: the parser against glibc's reader
# --------------------------------------------------------------------------------------------------------

def test_records_parse_as_utmpdump_reads_them(tmp_path: Path) -> None:
    utmpdump = shutil.which("utmpdump")
    if utmpdump is None:
        pytest.skip("utmpdump (util-linux) is not installed")
    path = tmp_path / "wtmp"
    u.append(path, u.boot(T0), ALICE_LOGIN, BOB_LOGIN, *[u.getty("tty1", 700, T0 + 1)], ALICE_LOGOUT,
             u.runlevel(T0 + 40, "5", "N"), u.shutdown(T0 + 50),
             u.login("root", "tty1", 701, T0 + 60.000001, host="", ip=None))
    dumped = subprocess.run([utmpdump, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    data = path.read_bytes()
    assert len(dumped) == len(data) // utmp.RECORD_SIZE == 9
    for index, line in enumerate(dumped):
        fields = [field.strip() for field in line.strip()[1:-1].split("] [")]
        kind, pid, _id, user, tty, host, address, when = fields
        record = utmp.parse(data, index * utmp.RECORD_SIZE)
        assert (record.type, record.pid, record.user, record.line, record.host) == \
            (int(kind), int(pid), user, tty, host), line
        assert utmp.problem(data, index * utmp.RECORD_SIZE) is None
        assert (utmp.source_ip(record.address, "") or "0.0.0.0") == address, line
        seconds, micros = when.split(",")[0], when.split(",")[1][:6]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.seconds))
        assert (stamp, int(micros)) == (seconds, record.microseconds), line


def test_records_written_by_utmpdump_read_as_events(root: Path) -> None:
    """A wtmp written by another program (util-linux's `utmpdump -r`, from its text form), not by these tests."""
    utmpdump = shutil.which("utmpdump")
    if utmpdump is None:
        pytest.skip("utmpdump (util-linux) is not installed")
    text = ("[2] [00000] [~~  ] [reboot  ] [~           ] [6.1.0-13-amd64      ] [0.0.0.0        ] "
            "[2023-11-14T22:13:20,000000+00:00]\n"
            "[7] [04242] [ts/0] [alice   ] [pts/0       ] [laptop.example.com  ] [192.0.2.10     ] "
            "[2023-11-14T22:13:30,500000+00:00]\n"
            "[7] [04343] [ts/1] [bob     ] [pts/1       ] [2001:db8::7         ] [2001:db8::7    ] "
            "[2023-11-14T22:13:40,000000+00:00]\n"
            "[8] [04242] [ts/0] [        ] [pts/0       ] [                    ] [0.0.0.0        ] "
            "[2023-11-14T22:13:50,000000+00:00]\n")
    written = subprocess.run([utmpdump, "-r"], input=text.encode(), capture_output=True, check=True).stdout
    assert len(written) == 4 * utmp.RECORD_SIZE
    wtmp(root).write_bytes(written)
    events = read_all(make(root), None)[1]
    assert summary(events) == [
        ("boot", "System boot"),
        ("user_login", ALICE_LOGIN_MESSAGE),
        ("user_login", "Login by user bob (UID: -1) on pts/1 (PID: 4343) from 2001:db8::7 (IP: 2001:db8::7)"),
        ("user_logout", ALICE_LOGIN_MESSAGE.replace("Login", "Logout")),
    ]
    assert [event.stamped(1).to_document({})["@timestamp"] for event in events] == [
        "2023-11-14T22:13:20.000Z", "2023-11-14T22:13:30.500Z", "2023-11-14T22:13:40.000Z", "2023-11-14T22:13:50.000Z"]


def test_source_ip_rules() -> None:
    assert utmp.source_ip(bytes(16), "") is None, "a local login has no source.ip, never 0.0.0.0"
    assert utmp.source_ip(bytes(16), ":0") is None
    assert utmp.source_ip(bytes([192, 0, 2, 1]) + bytes(12), "") == "192.0.2.1"
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    assert utmp.source_ip(v6, "") == "2001:db8::1"
    mapped = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 7])
    assert utmp.source_ip(mapped, "") == "198.51.100.7", "an IPv4-mapped IPv6 address is the IPv4 one"
    assert utmp.source_ip(bytes(16), "203.0.113.9") == "203.0.113.9", "no address stored: ut_host's, if one"
    assert utmp.source_ip(bytes(16), "0.0.0.0") is None


# --------------------------------------------------------------------------------------------------------
# Events: Auditbeat's actions, fields and messages
# --------------------------------------------------------------------------------------------------------

def test_first_run_reports_the_whole_history_as_auditbeat_does(root: Path) -> None:
    u.append(wtmp(root), u.boot(T0), *[u.getty("tty1", 600, T0 + 1)], ALICE_LOGIN, BOB_LOGIN, ALICE_LOGOUT,
             u.logout("tty1", 600, T0 + 31), u.runlevel(T0 + 35, "5"), u.shutdown(T0 + 40))
    u.append(btmp(root), u.failed("mallory", "ssh:notty", 5151, T0 + 25, host="203.0.113.66", ip="203.0.113.66"))
    snapshot, events = read_all(make(root), None)
    assert summary(events) == [
        ("boot", "System boot"),
        ("user_login", ALICE_LOGIN_MESSAGE),
        ("user_login", "Login by user bob (UID: -1) on pts/1 (PID: 4343) from 2001:db8::7 (IP: 2001:db8::7)"),
        ("user_logout", "Logout by user alice (UID: 1000) on pts/0 (PID: 4242) from laptop.example.com "
                        "(IP: 192.0.2.10)"),
        ("user_logout", "Logout by user bob (UID: -1) on pts/1 (PID: 4343) from 2001:db8::7 (IP: 2001:db8::7)"),
        ("shutdown", "System shutdown"),
        ("user_login", "Failed login by user mallory (UID: -1) on ssh:notty (PID: 5151) from 203.0.113.66 "
                       "(IP: 203.0.113.66)"),
    ]
    boot, login, v6, logout, closed, shutdown, failed = [event.stamped(1).to_document({}) for event in events]
    assert boot["event"]["category"] == ["host"] and boot["event"]["type"] == ["start"]
    assert shutdown["event"]["category"] == ["host"] and shutdown["event"]["type"] == ["end"]
    assert "user" not in boot and "process" not in boot and "terminal" not in boot["system"]["audit"]["login"]
    assert boot["@timestamp"] == "2023-11-14T22:13:20.000Z", "@timestamp is the record's time"
    assert login["@timestamp"] == "2023-11-14T22:13:30.500Z"
    assert login["event"]["category"] == ["authentication"]
    assert login["event"]["type"] == ["start", "authentication_success"] and login["event"]["outcome"] == "success"
    assert login["user"] == {"name": "alice", "id": "1000"} and login["related"] == {"user": ["alice"],
                                                                                      "ip": ["192.0.2.10"]}
    assert login["process"] == {"pid": 4242}
    assert login["source"] == {"ip": "192.0.2.10", "domain": "laptop.example.com"}
    assert login["system"]["audit"]["login"] == {"origin": "/var/log/wtmp", "terminal": "pts/0"}
    assert v6["source"] == {"ip": "2001:db8::7"}, "no source.domain when ut_host is the address itself"
    assert "id" not in v6["user"], "bob has no passwd entry under hostfs"
    assert logout["event"]["type"] == ["end"] and "outcome" not in logout["event"]
    assert logout["user"] == login["user"] and logout["source"] == login["source"]
    assert logout["@timestamp"] == "2023-11-14T22:13:50.000Z"
    assert closed["event"]["reason"] == "system shutdown", "a session still open when the host went down ends"
    assert failed["event"]["type"] == ["start", "authentication_failure"] and failed["event"]["outcome"] == "failure"
    assert failed["system"]["audit"]["login"]["origin"] == "/var/log/btmp"
    assert all(event.fields["system"]["audit"]["detected_at_startup"] is True for event in events), \
        "what was written before the agent started is marked as found at startup"
    assert snapshot["sessions"] == {}


def test_local_login_has_no_source_and_nil_ip_in_its_message(root: Path) -> None:
    u.append(wtmp(root), u.login("root", "tty1", 811, T0))
    [event] = read_all(make(root), None)[1]
    assert event.message == "Login by user root (UID: 0) on tty1 (PID: 811) from  (IP: <nil>)"
    assert "source" not in event.fields and "ip" not in event.fields["related"]


def test_boot_after_a_crash_ends_the_open_sessions_and_runlevels_are_not_shutdowns(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN, u.runlevel(T0 + 12, "3", "5"), u.runlevel(T0 + 13, "6", "3"),
             u.boot(T0 + 100))
    events = read_all(make(root), None)[1]
    assert [event.action for event in events] == ["user_login", "user_logout", "shutdown", "boot"]
    assert events[1].fields["event"]["reason"] == "system shutdown", "runlevel 6 (reboot) is a shutdown"
    u.append(wtmp(root), BOB_LOGIN, u.boot(T0 + 200))
    dataset = make(root)
    again = read_all(dataset, None)[1]
    assert [(e.action, e.fields.get("event", {}).get("reason")) for e in again[-3:]] == \
        [("user_login", None), ("user_logout", "system boot"), ("boot", None)]


def test_dead_process_without_a_login_is_not_a_logout(root: Path) -> None:
    u.append(wtmp(root), *[u.getty("tty2", 900, T0)], u.logout("tty2", 900, T0 + 1), u.logout("pts/9", 1, T0 + 2))
    assert read_all(make(root), None)[1] == []


# --------------------------------------------------------------------------------------------------------
# Exactly once: appends, restarts, rotation, truncation, replacement
# --------------------------------------------------------------------------------------------------------

def test_appended_records_are_reported_once_and_an_idle_pass_changes_nothing(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    snapshot, first = read_all(dataset, None)
    assert len(first) == 1
    u.append(wtmp(root), BOB_LOGIN)
    snapshot, second = read_all(dataset, snapshot)
    assert [event.fields["user"]["name"] for event in second] == ["bob"]
    assert "detected_at_startup" not in audit(second[0]), "written while the agent ran: a live event"
    idle, none = dataset.advance(snapshot)
    assert none == [] and idle is snapshot, "nothing new: the same snapshot, nothing to persist"


def test_a_logout_after_a_restart_pairs_with_the_login_before_it(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    snapshot, _ = read_all(make(root), None)
    u.append(wtmp(root), ALICE_LOGOUT)  # written while the agent was down
    restarted = make(root)
    snapshot, events = read_all(restarted, snapshot)
    assert summary(events) == [("user_logout", "Logout by user alice (UID: 1000) on pts/0 (PID: 4242) from "
                                                "laptop.example.com (IP: 192.0.2.10)")]
    assert audit(events[0])["detected_at_startup"] is True
    u.append(wtmp(root), BOB_LOGIN)
    live = read_all(restarted, snapshot)[1]
    assert [event.fields["user"]["name"] for event in live] == ["bob"]
    assert "detected_at_startup" not in audit(live[0])


def test_rotation_by_rename_reads_the_rest_of_the_old_file_then_the_new_one(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    snapshot, _ = read_all(dataset, None)
    u.append(wtmp(root), BOB_LOGIN)  # written just before logrotate moves the file
    os.rename(wtmp(root), wtmp(root, "wtmp.1"))
    u.append(wtmp(root), ALICE_LOGOUT)
    snapshot, events = read_all(dataset, snapshot)
    assert [(event.action, audit(event)["login"]["origin"]) for event in events] == \
        [("user_login", "/var/log/wtmp.1"), ("user_logout", "/var/log/wtmp")]
    assert events[1].fields["user"]["name"] == "alice", "the session survives the rotation"
    assert read_all(dataset, snapshot)[1] == []


@pytest.mark.parametrize("compress,suffix", [(gzip.compress, ".gz"), (bz2.compress, ".bz2"), (lzma.compress, ".xz")])
def test_a_compressed_rotation_is_not_reported_again_and_one_never_seen_is_read_once(
        root: Path, compress: Any, suffix: str) -> None:
    u.append(wtmp(root), ALICE_LOGIN, BOB_LOGIN)
    dataset = make(root)
    snapshot, _ = read_all(dataset, None)
    os.rename(wtmp(root), wtmp(root, "wtmp.1"))  # logrotate: rename, create, compress, remove
    u.append(wtmp(root), ALICE_LOGOUT)
    wtmp(root, "wtmp.1" + suffix).write_bytes(compress(wtmp(root, "wtmp.1").read_bytes()))
    os.remove(wtmp(root, "wtmp.1"))
    snapshot, events = read_all(dataset, snapshot)
    assert summary(events) == [("user_logout", "Logout by user alice (UID: 1000) on pts/0 (PID: 4242) from "
                                               "laptop.example.com (IP: 192.0.2.10)")]
    # A compressed file whose records were never reported (restored from a backup) is read once.
    wtmp(root, "wtmp.2" + suffix).write_bytes(compress(u.login("root", "tty1", 5, T0 - 90) + u.logout("tty1", 5, T0)))
    os.utime(wtmp(root, "wtmp.2" + suffix), (T0, T0))
    snapshot, events = read_all(dataset, snapshot)
    assert [(event.action, audit(event)["login"]["origin"]) for event in events] == \
        [("user_login", f"/var/log/wtmp.2{suffix}"), ("user_logout", f"/var/log/wtmp.2{suffix}")]
    assert read_all(dataset, snapshot)[1] == []
    assert read_all(make(root), snapshot)[1] == [], "nor after a restart"


def test_a_compressed_file_still_being_written_is_read_when_complete(root: Path, caplog) -> None:
    whole = gzip.compress(ALICE_LOGIN + BOB_LOGIN)
    wtmp(root, "wtmp.1.gz").write_bytes(whole[: len(whole) // 2])
    dataset = make(root)
    snapshot, events = read_all(dataset, None)
    assert all(event.fields["user"]["name"] == "alice" for event in events)
    wtmp(root, "wtmp.1.gz").write_bytes(whole)
    snapshot, rest = read_all(dataset, snapshot)
    assert [event.fields["user"]["name"] for event in events + rest] == ["alice", "bob"], "each record once"


def test_truncation_then_new_records_reports_only_the_new_ones(root: Path, caplog) -> None:
    u.append(wtmp(root), ALICE_LOGIN, BOB_LOGIN)
    dataset = make(root)
    snapshot, _ = read_all(dataset, None)
    with wtmp(root).open("r+b") as handle:
        handle.truncate(0)
    new = [u.login("root", f"tty{index}", 100 + index, T0 + 100 + index) for index in range(3)]
    u.append(wtmp(root), *new)  # longer than what had been read: only the content tells it was rewritten
    caplog.set_level(logging.WARNING)
    snapshot, events = read_all(dataset, snapshot)
    assert [audit(event)["login"]["terminal"] for event in events] == ["tty0", "tty1", "tty2"]
    [warning] = [message for message in warnings_of(caplog) if "/var/log/wtmp" in message]
    assert "was rewritten" in warning and "offset 768" in warning


def test_a_file_replaced_by_a_shorter_one_resends_nothing_and_skips_nothing(root: Path, caplog) -> None:
    records = [u.login("root", f"tty{index}", 100 + index, T0 + index) for index in range(5)]
    u.append(wtmp(root), *records)
    dataset = make(root)
    snapshot, _ = read_all(dataset, None)
    # An edited copy (a record before the cursor removed): the last record read is still there.
    replace_file(wtmp(root), b"".join(records[:2] + records[3:]) + u.login("alice", "pts/5", 9, T0 + 50))
    snapshot, events = read_all(dataset, snapshot)
    assert [event.fields["user"]["name"] for event in events] == ["alice"]
    # A shorter file without the last record read: records not newer than it count as reported.
    caplog.set_level(logging.WARNING)
    replace_file(wtmp(root), b"".join(records[:2]) + u.login("bob", "pts/6", 10, T0 + 60))
    snapshot, events = read_all(dataset, snapshot)
    assert [event.fields["user"]["name"] for event in events] == ["bob"]
    assert any("2 records not newer than the last one reported" in message for message in warnings_of(caplog))


def test_a_reused_inode_is_a_new_file(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    snapshot, _ = read_all(dataset, None)
    [(file_id, cursor)] = [(key, value) for key, value in snapshot["files"].items() if value["kind"] == "wtmp"]
    # The saved cursor belonged to a file that was deleted; its inode now holds another file, elsewhere.
    stale = persisted(snapshot)
    stale["files"][file_id] = {**cursor, "path": "/var/log/wtmp.3", "last": "", "head": "", "offset": 0,
                               "size": 0, "last_time": T0 + 500}
    assert [event.fields["user"]["name"] for event in read_all(make(root), stale)[1]] == ["alice"]


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------

def test_a_torn_last_record_waits_for_the_rest(root: Path, caplog, monkeypatch) -> None:
    u.append(wtmp(root), ALICE_LOGIN, BOB_LOGIN[:200])
    dataset = make(root)
    snapshot, events = read_all(dataset, None)
    assert [event.fields["user"]["name"] for event in events] == ["alice"]
    assert snapshot["files"][next(iter(snapshot["files"]))]["offset"] == utmp.RECORD_SIZE
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(login_dataset, "STALLED_TAIL_SECONDS", 0.0)
    os.utime(wtmp(root), ns=(1, 1))  # looked at again (no new byte yet): a tail this old is worth a warning
    snapshot, none = read_all(dataset, snapshot)
    assert none == []
    assert any("/var/log/wtmp: the last 200 bytes (from offset 384) are not a whole record" in message
               for message in warnings_of(caplog))
    u.append(wtmp(root), BOB_LOGIN[200:])
    snapshot, rest = read_all(dataset, snapshot)
    assert summary(rest) == [("user_login", "Login by user bob (UID: -1) on pts/1 (PID: 4343) from 2001:db8::7 "
                                            "(IP: 2001:db8::7)")], "the whole record, not a misparse"


def test_garbage_and_unknown_types_are_skipped_with_one_warning_and_nothing_else_is_lost(root: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    unknown = bytearray(u.login("eve", "pts/7", 7, T0 + 5))
    unknown[0:2] = (42).to_bytes(2, "little")
    noise = bytes((index * 37 + 11) % 251 for index in range(100))  # not a multiple of a record: out of step
    u.append(wtmp(root), ALICE_LOGIN, bytes(unknown), BOB_LOGIN, noise, ALICE_LOGOUT, os.urandom(384), BOB_LOGIN)
    events = read_all(make(root), None)[1]
    assert [event.action for event in events] == ["user_login", "user_login", "user_logout", "user_login"]
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("/var/log/wtmp: skipped 868 bytes that are not utmp records from offset 384 "
                                  "(unknown record type 42)")


def test_bytes_out_of_step_before_a_record_being_written_are_resolved_when_it_completes(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN, b"\x99" * 100, BOB_LOGIN[:150])
    dataset = make(root)
    snapshot, events = read_all(dataset, None)
    assert len(events) == 1
    u.append(wtmp(root), BOB_LOGIN[150:], ALICE_LOGOUT)
    assert [event.action for event in read_all(dataset, snapshot)[1]] == ["user_login", "user_logout"]


def test_btmp_records_of_other_types_are_skipped_with_a_warning(root: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    u.append(btmp(root), u.logout("pts/0", 1, T0), u.failed("root", "ssh:notty", 2, T0 + 1, ip="198.51.100.1"))
    events = read_all(make(root), None)[1]
    assert [event.fields["event"]["outcome"] for event in events] == ["failure"]
    assert events[0].fields["user"]["id"] == "0"
    assert any("/var/log/btmp: skipped 1 records of a type a bad-login file does not hold (first: DEAD_PROCESS at "
               "offset 0)" in message for message in warnings_of(caplog))


def test_files_that_are_not_utmp_are_not_read(root: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    database = sqlite3.connect(wtmp(root, "wtmp.db"))  # wtmpdb, on newer distributions
    database.execute("CREATE TABLE wtmp (ID INTEGER PRIMARY KEY, Type INTEGER, User TEXT)")
    database.commit()
    database.close()
    os.mkfifo(wtmp(root, "wtmp.fifo"))
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    snapshot, events = read_all(dataset, None)
    assert len(events) == 1
    warnings = warnings_of(caplog)
    assert "/var/log/wtmp.db is a wtmpdb SQLite database, not a utmp file; it is not read" in warnings
    assert "/var/log/wtmp.fifo is not a regular file; not read" in warnings
    caplog.clear()
    read_all(dataset, snapshot)
    assert warnings_of(caplog) == [], "said once"


def test_a_damaged_saved_state_is_survived(root: Path, caplog) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    snapshot, _ = read_all(make(root), None)
    damaged = persisted(snapshot)
    damaged["sessions"] = {"pts/0": {"user": 5}}
    damaged["retired"] = ["nonsense"]
    damaged["files"] = {"1:2": {"path": "/x"}}
    caplog.set_level(logging.WARNING)
    assert [event.action for event in read_all(make(root), damaged)[1]] == ["user_login"]
    assert len(warnings_of(caplog)) == 3
    assert read_all(make(root), {"format": 99})[1] != [], "an unknown format is read as a first run"


def test_each_pass_examines_a_bounded_number_of_records_and_asks_for_more(root: Path, monkeypatch) -> None:
    monkeypatch.setattr(login_dataset, "RECORDS_PER_PASS", 100)
    history = u.synthetic_history(1001)
    u.append(wtmp(root), history)
    dataset = make(root)
    snapshot, events = dataset.advance(None)
    assert dataset.more.is_set() and 40 <= len(events) <= 100
    snapshot, rest = read_all(dataset, persisted(snapshot))
    logins = [event for event in events + rest if event.action == "user_login"]
    assert len(logins) == user_processes(history) == 500, "every login once"


def test_a_big_file_is_read_in_bounded_memory(root: Path, monkeypatch) -> None:
    """A 26 MiB wtmp, mostly a hole (blank records), its sessions at the end, read 2,048 records a pass: the
    Python heap holds a few chunks and one pass's events (about 6 MiB), not the file (ops/bench/bench_login.py
    reads 250 MB at the default 8,192 records a pass, and measures RSS)."""
    monkeypatch.setattr(login_dataset, "RECORDS_PER_PASS", 2048)
    path = wtmp(root)
    with path.open("wb") as handle:
        handle.truncate(utmp.RECORD_SIZE * 65536)
    u.append(path, u.synthetic_history(3000))
    dataset = make(root)
    snapshot: Any = None
    logins = peak = passes = 0
    tracemalloc.start()
    try:
        while True:
            tracemalloc.reset_peak()
            snapshot, events = dataset.advance(snapshot)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            logins += sum(event.action == "user_login" for event in events)
            passes += 1
            del events
            if not dataset.more.is_set():
                break
    finally:
        tracemalloc.stop()
    assert logins == user_processes(path.read_bytes()) == 1500
    assert passes >= 33
    assert peak < 8 << 20, f"peak Python allocations {peak} bytes for a {path.stat().st_size} byte file"


# --------------------------------------------------------------------------------------------------------
# Files: order, patterns, the stream
# --------------------------------------------------------------------------------------------------------

def test_rotated_files_are_read_oldest_first(root: Path) -> None:
    for name, when in (("wtmp", 300), ("wtmp.1", 200), ("wtmp.10", 50), ("wtmp.9", 100)):
        u.append(wtmp(root, name), u.login("root", "tty1", int(when), T0 + when))
        os.utime(wtmp(root, name), (T0 + when, T0 + when))
    order = [event.fields["process"]["pid"] for event in read_all(make(root), None)[1]]
    assert order == [50, 100, 200, 300]
    same_time = sorted(["/var/log/wtmp", "/var/log/wtmp.1", "/var/log/wtmp.2", "/var/log/wtmp.10"],
                       key=lambda path: files._rotation_order(files.Found(path, Path(path), "wtmp", 0, 0, 0, 0)))
    assert same_time == ["/var/log/wtmp.10", "/var/log/wtmp.2", "/var/log/wtmp.1", "/var/log/wtmp"]


def test_patterns_are_options_read_under_hostfs(root: Path, caplog) -> None:
    u.append(root / "srv/audit/logins", ALICE_LOGIN)
    u.append(wtmp(root), BOB_LOGIN)
    caplog.set_level(logging.WARNING)
    events = read_all(make(root, wtmp_file_pattern="/srv/audit/login*", btmp_file_pattern=""), None)[1]
    assert [audit(event)["login"]["origin"] for event in events] == ["/srv/audit/logins"]
    assert warnings_of(caplog) == []
    read_all(make(root, wtmp_file_pattern="/nowhere/wtmp*"), None)
    assert any("no file matches /nowhere/wtmp*" in message for message in warnings_of(caplog))


def test_the_stream_notifies_a_change_within_its_poll_interval(root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    watch = dataset.open_stream()
    assert watch is not None
    try:
        assert watch.read(0.5) == [FILES_CHANGED], "the first look always notifies"
        assert watch.read(0.6) == []
        threading.Timer(0.2, u.append, (wtmp(root), BOB_LOGIN)).start()
        started = time.monotonic()
        assert wait_for(lambda: watch.read(0.1), 3.0, "a notification of the appended record") == [FILES_CHANGED]
        assert time.monotonic() - started < 2.0
        dataset.more.set()
        started = time.monotonic()
        assert watch.read(5.0) == [FILES_CHANGED] and time.monotonic() - started < 0.5, "a backlog: at once"
    finally:
        watch.close()
    assert make(root, wtmp_file_pattern="", btmp_file_pattern="").open_stream() is None


def test_the_lister_sees_files_come_go_and_grow_without_relisting_a_quiet_directory(root: Path, monkeypatch) -> None:
    u.append(wtmp(root), ALICE_LOGIN)
    lister = files.Lister(root, (("wtmp", "/var/log/wtmp*"), ("btmp", "/var/log/btmp*")))
    names = lambda: sorted(Path(entry[0]).name for entry in lister.signature())  # noqa: E731
    assert names() == ["btmp", "wtmp"]
    os.utime(root / "var/log", ns=(1, 1))  # an old directory: its listing is reused while its mtime holds
    first = lister.signature()
    monkeypatch.setattr(files.glob, "glob", lambda *args, **kwargs: pytest.fail("listed a quiet directory"))
    assert lister.signature() == first
    u.append(wtmp(root), BOB_LOGIN)
    assert lister.signature() != first, "a file that grew"
    monkeypatch.undo()
    os.rename(wtmp(root), wtmp(root, "wtmp.1"))
    assert names() == ["btmp", "wtmp.1"]
    u.append(wtmp(root), ALICE_LOGOUT)
    assert names() == ["btmp", "wtmp", "wtmp.1"]
    os.remove(wtmp(root, "wtmp.1"))
    assert names() == ["btmp", "wtmp"]


def test_the_watch_returns_at_its_timeout_when_nothing_changes() -> None:
    more = threading.Event()
    watch = FilesWatch(lambda: 1, more, interval=0.05)
    assert watch.read(0.0) == [FILES_CHANGED]
    started = time.monotonic()
    assert watch.read(0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0
    watch.close()
    assert watch.read(1.0) == [] and watch.lost() == 0


# --------------------------------------------------------------------------------------------------------
# Through the collector runtime: spool, commit, restart
# --------------------------------------------------------------------------------------------------------

def runner(tmp_path: Path, root: Path) -> DatasetRunner:
    data = tmp_path / "data"
    return DatasetRunner(make(root), 3600.0, StateStore(data / "state.db"), SpoolWriter(data / "spool" / "login"),
                         data / "spool", 1 << 30, common=lambda: {"agent": {"type": "hostaudit"}})


def spooled(tmp_path: Path) -> list[dict]:
    reader = SpoolReader(tmp_path / "data" / "spool" / "login")
    return [json.loads(record.payload) for record in reader.read(100_000, 1 << 30)]


def test_the_runner_spools_then_commits_cursors_and_a_restart_sends_nothing_twice(tmp_path: Path, root: Path) -> None:
    u.append(wtmp(root), ALICE_LOGIN, *[u.getty("tty1", 600, T0 + 1)])
    first = runner(tmp_path, root)
    assert first.cycle().events == 1, "the first cycle reports the history (Auditbeat's first run)"
    u.append(wtmp(root), *[u.getty("tty2", 601, T0 + 2)])
    assert first.apply_stream([FILES_CHANGED]) and first.cycle().events == 0
    committed = StateStore(tmp_path / "data" / "state.db").load("login").snapshot
    assert next(iter(committed["files"].values()))["offset"] == 5 * utmp.RECORD_SIZE, \
        "a cursor that moved without events is persisted too"
    first.close()
    u.append(wtmp(root), ALICE_LOGOUT)
    second = runner(tmp_path, root)
    assert second.cycle().events == 1
    second.close()
    events = spooled(tmp_path)
    assert [(e["event"]["action"], e["event"]["sequence"]) for e in events] == [("user_login", 1),
                                                                                 ("user_logout", 2)]
    assert events[1]["system"]["audit"]["detected_at_startup"] is True
    for event in events:
        assert_ecs(event, EVENT_FIELDS)


# --------------------------------------------------------------------------------------------------------
# The machine's own wtmp
# --------------------------------------------------------------------------------------------------------

def test_the_machines_own_wtmp_reads_as_utmpdump_reads_it() -> None:
    path = Path("/var/log/wtmp")
    if not path.exists():
        pytest.skip("this machine has no /var/log/wtmp")
    if path.stat().st_size < utmp.RECORD_SIZE:
        pytest.skip("this machine's /var/log/wtmp holds no record (an empty file, e.g. in a container)")
    utmpdump = shutil.which("utmpdump")
    if utmpdump is None:
        pytest.skip("utmpdump (util-linux) is not installed")
    size = path.stat().st_size // utmp.RECORD_SIZE * utmp.RECORD_SIZE
    dumped = subprocess.run([utmpdump, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    types = [int(line[1:line.index("]")]) for line in dumped[: size // utmp.RECORD_SIZE]]
    dataset = make(Path("/"), btmp_file_pattern="", wtmp_file_pattern="/var/log/wtmp")
    snapshot, events = read_all(dataset, None)
    logins = [event for event in events if event.action == "user_login"]
    assert len(logins) == types.count(utmp.USER_PROCESS)
    boots = [event for event in events if event.action == "boot"]
    assert len(boots) <= types.count(utmp.BOOT_TIME)
    assert next(iter(snapshot["files"].values()))["offset"] >= size - utmp.RECORD_SIZE


# --------------------------------------------------------------------------------------------------------
# Options, registration, sample
# --------------------------------------------------------------------------------------------------------

def test_options_defaults_and_one_line_errors() -> None:
    assert parse_options(None) == LoginOptions() == SCHEMA()
    assert (LoginOptions().wtmp_file_pattern, LoginOptions().btmp_file_pattern) == ("/var/log/wtmp*", "/var/log/btmp*")
    assert parse_options({"btmp_file_pattern": ""}).btmp_file_pattern == ""
    with pytest.raises(ConfigError) as error:
        parse_options({"wtmp_file_pattern": "var/log/wtmp*"})
    assert str(error.value) == ("login.wtmp_file_pattern: 'var/log/wtmp*' is not an absolute path pattern "
                                "(e.g. /var/log/wtmp*), nor \"\" for no file")
    with pytest.raises(ConfigError) as error:
        parse_options({"btmp_file_pattern": 5})
    assert str(error.value).startswith("login.btmp_file_pattern: 5 is not an absolute path pattern")
    with pytest.raises(ConfigError) as error:
        parse_options({"wtmp_pattern": "/x"})
    assert str(error.value) == "login.wtmp_pattern: unknown setting (did you mean wtmp_file_pattern?)"


def test_login_is_built() -> None:
    assert BUILT_DATASETS["login"] == "actors.datasets.login.dataset" and "login" not in PLANNED_DATASETS


def sample_document(root: Path) -> dict[str, Any]:
    """The `user_login` document of alice's ssh login from IPv6, read live, as the runtime would write it."""
    u.append(wtmp(root), ALICE_LOGIN)
    dataset = make(root)
    snapshot, _ = dataset.advance(None)
    u.append(wtmp(root), u.login("alice", "pts/3", 31337, T0 + 3600.25, host="laptop.example.com",
                                 ip="2001:db8:5::42"))
    [event] = dataset.advance(snapshot)[1]
    common = sample_common({"id": "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b", "name": "ubuntu-jammy",
                            "hostname": "ubuntu-jammy"})
    return event.stamped(1).to_document(common)


def test_sample_document_has_the_fields_we_emit(root: Path) -> None:
    sample = checked_sample("login", sample_document(root))
    assert sample["message"] == \
        "Login by user alice (UID: 1000) on pts/3 (PID: 31337) from laptop.example.com (IP: 2001:db8:5::42)"
