"""Tests of the package dataset (actors/datasets/package/) on synthetic dpkg, rpm and apk databases under a hostfs
root, on bad input, and on the real dpkg database of this machine."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Sequence
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.datasets import DatasetContext
from actors.datasets.package import dataset as package_dataset
from actors.datasets.package import dpkg
from actors.datasets.package.dpkg import Record, _fast, _generic, parse_status
from actors.datasets.package.options import PackageOptions, parse_options
from actors.datasets.package.records import Package
from actors.datasets.package.rpmdb import HeaderError, package_of, parse_header
from actors.ecs import assert_ecs
from actors.event import CHANGE, STATE, Event, iso_millis
from actors.hostfs import etc_files
from actors.hostfs.entity import package_entity_id
from actors.options import ConfigError
from tests.sample_support import EVENT_FIELDS, checked_sample, sample_common

HOST_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
INSTALLED_AT = 1_700_000_000

# A real header blob: rpm 4.18.0 (Debian's) built hostaudit-probe-2:1.2.3-4.noarch from a spec with Summary "A tiny
# package for hostaudit's tests", License MIT, URL https://example.org/hostaudit-probe and one 6-byte file, and
# installed it with `rpm --dbpath DIR -i --justdb`; this is its `blob` column in DIR/rpmdb.sqlite.
REAL_RPM_HEADER = base64.b64decode("".join((
    "AAAAPgAAA3AAAAA/AAAABwAAAskAAAAQAAAAZAAAAAgAAAAAAAAAAQAAA+gAAAAGAAAAAgAAAAEAAAPpAAAABgAAABIAAAABAAAD"
    "6gAAAAYAAAAYAAAAAQAAA+sAAAAEAAAAHAAAAAEAAAPsAAAACQAAACAAAAABAAAD7QAAAAkAAABFAAAAAQAAA+4AAAAEAAAAYAAA"
    "AAEAAAPvAAAABgAAAGQAAAABAAAD8QAAAAQAAABoAAAAAQAAA/YAAAAGAAAAbAAAAAEAAAP4AAAACQAAAHAAAAABAAAD/AAAAAYA"
    "AAB8AAAAAQAAA/0AAAAGAAAAoAAAAAEAAAP+AAAABgAAAKYAAAABAAAEBAAAAAQAAACwAAAAAQAABAYAAAADAAAAtAAAAAEAAAQJ"
    "AAAAAwAAALYAAAABAAAECgAAAAQAAAC4AAAAAQAABAsAAAAIAAAAvAAAAAEAAAQMAAAACAAAAP0AAAABAAAEDQAAAAQAAAEAAAAA"
    "AQAABA8AAAAIAAABBAAAAAEAAAQQAAAACAAAAQkAAAABAAAEFAAAAAYAAAEOAAAAAQAABBUAAAAEAAABMAAAAAEAAAQXAAAACAAA"
    "ATQAAAABAAAEGAAAAAQAAAFEAAAAAwAABBkAAAAIAAABUAAAAAMAAAQaAAAACAAAAZ8AAAADAAAEKAAAAAYAAAG1AAAAAQAABEcA"
    "AAAEAAABvAAAAAEAAARIAAAABAAAAcAAAAABAAAESQAAAAgAAAHEAAAAAQAABFgAAAAEAAAByAAAAAEAAARZAAAACAAAAcwAAAAB"
    "AAAEXAAAAAQAAAHYAAAAAQAABF0AAAAIAAAB3AAAAAEAAAReAAAACAAAAeYAAAABAAAEYgAAAAYAAAH8AAAAAQAABGQAAAAGAAAC"
    "AwAAAAEAAARlAAAABgAAAggAAAABAAAEZgAAAAYAAAINAAAAAQAABGwAAAAGAAACDwAAAAEAAAR0AAAABAAAAiQAAAABAAAEdQAA"
    "AAQAAAIoAAAAAQAABHYAAAAIAAACLAAAAAEAABOTAAAABAAAAjgAAAABAAATxgAAAAYAAAI8AAAAAQAAE+QAAAAIAAACQgAAAAEA"
    "ABPlAAAABAAAAoQAAAABAAAT6QAAAAgAAAKIAAAAAQAAAQEAAAAEAAAC3AAAAAEAAAEFAAAABwAAAuAAAAAQAAABDQAAAAYAAALw"
    "AAAAAQAAAREAAAAGAAADGQAAAAEAAAPwAAAABAAAA1wAAAABAAAEBQAAAAEAAANgAAAAAQAABBYAAAAEAAADZAAAAAEAAARnAAAA"
    "BAAAA2gAAAABAAAEaAAAAAQAAANsAAAAAUMAaG9zdGF1ZGl0LXByb2JlADEuMi4zADQAAAAAAAACQSB0aW55IHBhY2thZ2UgZm9y"
    "IGhvc3RhdWRpdCdzIHRlc3RzAEluc3RhbGxzIG9uZSBzbWFsbCBmaWxlLgAAAGsNCb52bQAAAAAABk1JVABVbnNwZWNpZmllZABo"
    "dHRwczovL2V4YW1wbGUub3JnL2hvc3RhdWRpdC1wcm9iZQBsaW51eABub2FyY2gAAAAAAAAABoGkAABrDQm+NTg5MWI1YjUyMmQ1"
    "ZGYwODZkMGZmMGIxMTBmYmQ5ZDIxYmI0ZmM3MTYzYWYzNGQwODI4NmEyZTg0NmY2YmUwMwAAAAAAAAAAcm9vdAByb290AGhvc3Rh"
    "dWRpdC1wcm9iZS0xLjIuMy00LnNyYy5ycG0AAAD/////aG9zdGF1ZGl0LXByb2JlAAEAAAoBAAAKAQAACnJwbWxpYihDb21wcmVz"
    "c2VkRmlsZU5hbWVzKQBycG1saWIoRmlsZURpZ2VzdHMpAHJwbWxpYihQYXlsb2FkRmlsZXNIYXZlUHJlZml4KQAzLjAuNC0xADQu"
    "Ni4wLTEANC4wLTEANC4xOC4wAAAAAAEAAAABAAAAAAAAAAgyOjEuMi4zLTQAAAAAAAAAaGVsbG8udHh0AC9vcHQvaG9zdGF1ZGl0"
    "LXByb2JlLwAtTzIgLWcAY3BpbwBnemlwADkAbm9hcmNoLWRlYmlhbi1saW51eAAAAAAAAAAAAABBU0NJSSB0ZXh0AAAAAAAIdXRm"
    "LTgAOTRhYjE3OTcyM2IxNWEwNWNjODU5OWI4OWIwYmQzMjRiNjg4NzgzMzczOTA3M2UyZmJkZmMwNDI0MmQzNTU2MwAAAAAACDIx"
    "YTI2ODg5ZjNlNzI1ZTNlOTkzOTNhOTg4ZjExNGEzMDhhZjVlMzdiZTg4Zjk2OGQxYjc1ZjFmYTVjZDVlOWEAAAAAPwAAAAf///yw"
    "AAAAEAAAAAAABq+GoxmTuklxwcrrvY7wMiLRMzkzNTdmNWIxNTM2NjQ5Mzg1YjkzZjI0YzQ4YzNmNDk3MWQ4N2M5NgBkNjA1MTNi"
    "N2EyMjBmYjYyNTNkNTM0NjBmNmYwZTIwMDU3YTZhNTkwMGUyYjgwYTA3YzM3MWI2NWZmNzgyOWYxAAAAaw0JwwAAAAAAAAEUAAAA"
    "A2sNCcM=")))
REAL_RPM_INSTALLTIME = 1796016579


# --------------------------------------------------------------------------------------------------------
# Synthetic databases
# --------------------------------------------------------------------------------------------------------

def stanza(name: str, version: str, status: str = "install ok installed", arch: str = "amd64",
           size: str = "120", description: str = "a package", homepage: str = "", extra: str = "") -> str:
    """One stanza as dpkg writes it (fields in dpkg's order), ending with its blank line."""
    lines = [f"Package: {name}", f"Status: {status}", "Priority: optional", "Section: misc"]
    if size:
        lines.append(f"Installed-Size: {size}")
    lines += ["Maintainer: Someone <someone@example.org>", f"Architecture: {arch}", f"Version: {version}",
              "Depends: libc6 (>= 2.36)"]
    if extra:
        lines.append(extra)
    lines += [f"Description: {description}", " A longer description.", " ."]
    if homepage:
        lines.append(f"Homepage: {homepage}")
    return "\n".join(lines) + "\n\n"


BASE_STATUS = (stanza("bash", "5.2.15-2+b2", size="7164", description="GNU Bourne Again SHell",
                      homepage="http://tiswww.case.edu/php/chet/bash/bashtop.html")
               + stanza("libc6", "2.36-9", description="GNU C Library: Shared libraries", extra="Multi-Arch: same")
               + stanza("zstd", "1.5.4+dfsg2-5", size="1887", description="fast lossless compression algorithm",
                        homepage="https://github.com/facebook/zstd"))


def write_dpkg(root: Path, status: str, lists: Iterable[str] = ("bash", "libc6:amd64", "zstd"),
               installed_at: int = INSTALLED_AT) -> Path:
    """Write var/lib/dpkg/status (atomically, as dpkg does) and info/<list>.list files with mtime `installed_at`."""
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    (admin / "updates").mkdir(exist_ok=True)
    for name in lists:
        path = admin / "info" / f"{name}.list"
        if not path.exists():
            path.write_text(f"/usr/share/doc/{name}\n")
            os.utime(path, (installed_at, installed_at))
    new = admin / "status-new"
    new.write_text(status)
    new.replace(admin / "status")
    return admin / "status"


# rpm header tags and types, as rpm writes them (the test's own encoder; the dataset's decoder is separate).
RPM_TAGS = {"name": (1000, 6), "version": (1001, 6), "release": (1002, 6), "epoch": (1003, 4),
            "summary": (1004, 9), "installtime": (1008, 4), "size": (1009, 4), "license": (1014, 6),
            "url": (1020, 6), "arch": (1022, 6)}


def rpm_header(**values: Any) -> bytes:
    """Encode an installed rpm header blob: big-endian index count and data length, 16-byte index entries
    (tag, type, offset, count), then the data store (strings NUL-terminated, INT32 4-aligned)."""
    entries, store = [], bytearray()
    for key, value in sorted(values.items(), key=lambda item: RPM_TAGS[item[0]][0]):
        tag, kind = RPM_TAGS[key]
        if kind == 4:
            store.extend(b"\0" * (-len(store) % 4))
            entries.append(struct.pack(">iIiI", tag, kind, len(store), 1))
            store.extend(struct.pack(">I", value))
        else:
            entries.append(struct.pack(">iIiI", tag, kind, len(store), 1))
            store.extend(value.encode() + b"\0")
    return struct.pack(">II", len(entries), len(store)) + b"".join(entries) + bytes(store)


def rpm_probe(version: str = "1.0", release: str = "1.fc39", **extra: Any) -> bytes:
    return rpm_header(name=extra.pop("name", "probe"), version=version, release=release, arch="x86_64",
                      summary="A probe", size=4096, installtime=INSTALLED_AT, license="MIT",
                      url="https://example.org/probe", **extra)


def write_rpmdb(root: Path, blobs: Sequence[bytes], directory: str = "var/lib/rpm") -> Path:
    """Create (or replace the rows of) rpmdb.sqlite with the schema rpm 4.16+ uses, in WAL mode as rpm does."""
    database = root / directory / "rpmdb.sqlite"
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS 'Packages' "
                           "(hnum INTEGER PRIMARY KEY AUTOINCREMENT,blob BLOB NOT NULL)")
        connection.execute("BEGIN")
        connection.execute("DELETE FROM Packages")
        connection.executemany("INSERT INTO Packages (blob) VALUES (?)", [(blob,) for blob in blobs])
        connection.execute("COMMIT")
    finally:
        connection.close()
    return database


APK_INSTALLED = """\
C:Q1ZsZyl0O8bzIZ0LrBZ1SlFuBvQp0=
P:musl
V:1.2.4-r2
A:x86_64
S:383152
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1696850760
F:lib
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q1FBwYbdVNZD3L0vjp8x3BmUJfvKs=

P:busybox
V:1.36.1-r5
A:x86_64
I:946176
T:Size optimized toolbox of many common UNIX utilities
U:https://busybox.net/
L:GPL-2.0-only
F:bin
R:busybox

"""


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files a test has just written count as settled (a dedicated test covers the 2 s window)."""
    monkeypatch.setattr(etc_files, "RACY_WINDOW_NS", 0)


def make_dataset(root: Path, **options: Any) -> package_dataset.PackageDataset:
    return package_dataset.create(DatasetContext(hostfs=root, options=options, host_id=HOST_ID))


def by_action(events: Sequence[Event]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for event in events:
        grouped.setdefault(event.action, []).append(event.fields["package"]["name"])
    return grouped


def document(event: Event) -> dict[str, Any]:
    doc = event.stamped(1).to_document(sample_common({"id": HOST_ID, "name": "h", "hostname": "h"}))
    assert_ecs(doc, EVENT_FIELDS)
    return doc


def change(dataset: package_dataset.PackageDataset, edit: Any) -> list[Event]:
    before = dataset.observe()
    edit()
    return list(dataset.diff(before, dataset.observe(), at_startup=False))


# --------------------------------------------------------------------------------------------------------
# dpkg
# --------------------------------------------------------------------------------------------------------

def test_dpkg_state_report_has_auditbeat_fields_messages_and_entity_ids(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    events = dataset.state_report(dataset.observe())
    assert [event.message for event in events] == [
        "Package bash (5.2.15-2+b2) is already installed",
        "Package libc6 (2.36-9) is already installed",
        "Package zstd (1.5.4+dfsg2-5) is already installed",
    ]
    bash = document(events[0])
    assert bash["event"]["kind"] == STATE and bash["event"]["action"] == "existing_package"
    assert bash["event"]["category"] == ["package"] and bash["event"]["type"] == ["info"]
    assert bash["package"] == {
        "name": "bash", "version": "5.2.15-2+b2", "architecture": "amd64", "installed": iso_millis(INSTALLED_AT),
        "size": 7164 * 1024, "description": "GNU Bourne Again SHell",
        "reference": "http://tiswww.case.edu/php/chet/bash/bashtop.html", "type": "dpkg",
    }
    audit = bash["system"]["audit"]["package"]
    assert audit["entity_id"] == package_entity_id(HOST_ID, "bash", "5.2.15-2+b2") and len(audit["entity_id"]) == 16
    assert (audit["name"], audit["version"], audit["arch"], audit["size"], audit["summary"]) == \
        ("bash", "5.2.15-2+b2", "amd64", 7164 * 1024, "GNU Bourne Again SHell")
    # Multi-Arch: same packages keep their file list as <name>:<arch>.list
    libc = document(events[1])
    assert libc["package"]["installed"] == iso_millis(INSTALLED_AT)


def test_entity_id_is_auditbeats_algorithm() -> None:
    import hashlib

    digest = hashlib.sha256(HOST_ID.encode() + b"zstd" + b"1.5.4").digest()[:12]
    assert package_entity_id(HOST_ID, "zstd", "1.5.4") == base64.b64encode(digest).decode()


def test_install_remove_and_update_are_reported_with_what_changed(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    newer = BASE_STATUS.replace("Version: 1.5.4+dfsg2-5", "Version: 1.5.5+dfsg2-1").replace(
        "Installed-Size: 1887", "Installed-Size: 1900")
    added = stanza("curl", "7.88.1-10", description="command line tool for transferring data with URL syntax")
    removed_bash = newer.split("\n\n", 1)[1]

    def edit() -> None:
        write_dpkg(tmp_path, removed_bash + added, lists=("curl",), installed_at=INSTALLED_AT + 60)
        os.utime(tmp_path / "var/lib/dpkg/info/zstd.list", (INSTALLED_AT + 30, INSTALLED_AT + 30))

    events = change(dataset, edit)
    assert by_action(events) == {"package_updated": ["zstd"], "package_installed": ["curl"],
                                 "package_removed": ["bash"]}
    updated, installed, removed = (document(event) for event in events)
    assert updated["message"] == "Package zstd (1.5.5+dfsg2-1) updated"
    assert updated["event"]["type"] == ["change"] and updated["event"]["kind"] == CHANGE
    assert updated["system"]["audit"]["changes"] == {
        "fields": ["package.version", "package.size", "package.installed"],
        "previous": {"package": {"version": "1.5.4+dfsg2-5", "size": 1887 * 1024,
                                 "installed": iso_millis(INSTALLED_AT)}},
    }
    assert updated["package"]["version"] == "1.5.5+dfsg2-1"
    assert installed["message"] == "Package curl (7.88.1-10) installed"
    assert installed["event"]["type"] == ["installation"]
    assert installed["package"]["installed"] == iso_millis(INSTALLED_AT + 60)
    assert removed["message"] == "Package bash (5.2.15-2+b2) removed" and removed["event"]["type"] == ["deletion"]


def test_a_reinstall_of_the_same_version_is_an_update_of_the_install_time(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)

    def reinstall() -> None:
        (tmp_path / "var/lib/dpkg/info/bash.list").unlink()
        write_dpkg(tmp_path, BASE_STATUS, lists=("bash",), installed_at=INSTALLED_AT + 3600)

    [event] = change(dataset, reinstall)
    assert event.action == "package_updated"
    assert event.fields["system"]["audit"]["changes"]["fields"] == ["package.installed"]


def test_removed_but_not_purged_is_removed_and_deinstall_selected_still_installed(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    status = (BASE_STATUS.replace("Package: bash\nStatus: install ok installed", "Package: bash\nStatus: deinstall ok config-files")
              .replace("Package: zstd\nStatus: install ok installed", "Package: zstd\nStatus: deinstall ok installed"))
    events = change(dataset, lambda: write_dpkg(tmp_path, status))
    assert by_action(events) == {"package_removed": ["bash"]}, "zstd is selected for removal but still installed"


def test_pending_updates_directory_is_applied_like_dpkg_does(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)

    def dpkg_journal() -> None:
        updates = tmp_path / "var/lib/dpkg/updates"
        (updates / "0000").write_text(stanza("zstd", "1.5.5-1", size="1887",
                                             description="fast lossless compression algorithm",
                                             homepage="https://github.com/facebook/zstd"))
        (updates / "0001").write_text(stanza("bash", "5.2.15-2+b2", status="purge ok not-installed"))
        (updates / "tmp.i").write_text("Package: half-written")  # dpkg's file in progress: not applied

    events = change(dataset, dpkg_journal)
    assert by_action(events) == {"package_updated": ["zstd"], "package_removed": ["bash"]}
    assert events[0].fields["system"]["audit"]["changes"]["fields"] == ["package.version"]


def test_case_insensitive_fields_in_any_order_are_read(tmp_path: Path) -> None:
    odd = ("package: odd\nversion: 1.0\ndescription: hand written\narchitecture: all\n"
           "STATUS: install ok installed\nInstalled-Size: 2M\n\n")
    write_dpkg(tmp_path, BASE_STATUS + odd, lists=())
    read = make_dataset(tmp_path).observe()["databases"]["dpkg"]
    odd_package = next(package for package in read["packages"] if package.name == "odd")
    assert (odd_package.version, odd_package.architecture, odd_package.size, odd_package.description) == \
        ("1.0", "all", 2 * 1024 * 1024, "hand written")


def test_an_unparseable_stanza_is_warned_and_its_package_kept(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    broken_libc = BASE_STATUS.replace("Package: libc6\nStatus: install ok installed\n",
                                      "Package: libc6\nStatus: install ok installed\nthis line has no colon\n")
    broken = broken_libc.replace("Version: 1.5.4+dfsg2-5", "Version: 1.5.5-1") + "Status: install ok installed\n\n"
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        events = change(dataset, lambda: write_dpkg(tmp_path, broken))
    assert by_action(events) == {"package_updated": ["zstd"]}, "libc6 is not reported removed"
    [warning] = [record.getMessage() for record in caplog.records]
    status_path = tmp_path / "var/lib/dpkg/status"
    line_of_libc = BASE_STATUS.split("\n").index("Package: libc6") + 1
    assert warning.startswith(f"{status_path}: line {line_of_libc}: stanza with a line without ':'")
    assert "stanza without a Package field" in warning and "kept as last seen" in warning
    assert "\n" not in warning
    caplog.clear()
    events = change(dataset, lambda: write_dpkg(tmp_path, broken.replace("this line has no colon\n", "")))
    assert events == [], "the repaired stanza is the package as it was"


def test_a_half_written_status_never_reports_everything_removed(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    status = write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    before = dataset.observe()
    complete = status.read_bytes()
    events: list[Event] = []
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        for cut in (0, 1, 40, len(complete) // 2, complete.index(b"Version: 1.5.4") + 12, len(complete) - 1):
            status.write_bytes(complete[:cut])  # written in place, as a non-atomic writer would leave it
            current = dataset.observe()
            events += dataset.diff(before, current, at_startup=False)
            before = current
    assert events == [], f"false events from a half-written file: {by_action(events)}"
    assert any("where the file ends (it was being written?)" in record.getMessage() for record in caplog.records)
    assert any("lists no package" in record.getMessage() for record in caplog.records)
    status.write_bytes(complete)
    assert dataset.diff(before, dataset.observe(), at_startup=False) == []
    assert [package.name for package in dataset.observe()["databases"]["dpkg"]["packages"]] == \
        ["bash", "libc6", "zstd"]


def test_removals_wait_until_the_database_settles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etc_files, "RACY_WINDOW_NS", 2_000_000_000)
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    before = dataset.observe()
    truncated = BASE_STATUS.split("\n\n")[0] + "\n\n"  # only bash left: as if read in the middle of a rewrite
    status = write_dpkg(tmp_path, truncated.replace("5.2.15-2+b2", "5.2.21-2"))
    written = max(status.stat().st_mtime_ns, status.stat().st_ctime_ns)
    during = dataset.observe()
    assert during is before, "nothing is taken from a file that is still changing"
    deadline = time.monotonic() + 10
    while time.time_ns() - written <= etc_files.RACY_WINDOW_NS:  # a condition, with a deadline
        assert time.monotonic() < deadline
        time.sleep(0.05)
    settled = dataset.observe()
    assert by_action(dataset.diff(during, settled, at_startup=False)) == {
        "package_updated": ["bash"], "package_removed": ["libc6", "zstd"]}


def test_a_database_that_keeps_changing_is_reported_without_removals(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etc_files, "RACY_WINDOW_NS", 2_000_000_000)
    monkeypatch.setattr(package_dataset, "SETTLE_LIMIT", 0.0)  # as if it had been changing for a long time
    write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    before = dataset.observe()
    write_dpkg(tmp_path, BASE_STATUS.split("\n\n")[0].replace("5.2.15-2+b2", "5.2.21-2") + "\n\n")
    assert by_action(dataset.diff(before, dataset.observe(), at_startup=False)) == {"package_updated": ["bash"]}


def test_an_unchanged_database_is_not_read_again(tmp_path: Path) -> None:
    status = write_dpkg(tmp_path, BASE_STATUS)
    dataset = make_dataset(tmp_path)
    first = dataset.observe()
    reads = etc_files.READ_COUNTS[str(status)]
    for _ in range(3):
        assert dataset.observe() is first
    assert etc_files.READ_COUNTS[str(status)] == reads
    write_dpkg(tmp_path, BASE_STATUS + stanza("curl", "7.88.1-10"), lists=("curl",))
    assert dataset.observe() is not first
    assert etc_files.READ_COUNTS[str(status)] == reads + 1


def test_a_restart_reports_downtime_changes_and_completes_an_incomplete_first_read(tmp_path: Path) -> None:
    write_dpkg(tmp_path, BASE_STATUS)
    committed = json.loads(json.dumps(make_dataset(tmp_path).observe()))  # as the state store keeps it
    write_dpkg(tmp_path, BASE_STATUS.replace("Version: 2.36-9", "Version: 2.36-10"))
    events = make_dataset(tmp_path).diff(committed, make_dataset(tmp_path).observe(), at_startup=True)
    assert by_action(events) == {"package_updated": ["libc6"]}
    # The first read after the restart finds the file cut: what it lacks comes from the committed snapshot.
    write_dpkg(tmp_path, BASE_STATUS[:BASE_STATUS.index("Package: zstd") + 20])
    restarted = make_dataset(tmp_path)
    current = restarted.observe()
    assert restarted.diff(committed, current, at_startup=True) == []
    assert [package.name for package in current["databases"]["dpkg"]["packages"]] == ["bash", "libc6", "zstd"]


def test_a_missing_or_unreadable_database_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        for _ in range(3):
            snapshot = dataset.observe()
    assert dataset.state_report(snapshot) == []
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"No package database found under {tmp_path}: none of /var/lib/dpkg/status")
    caplog.clear()
    (tmp_path / "var/lib/dpkg/status").mkdir(parents=True)  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        dataset.observe()
        dataset.observe()
    [warning] = [record.getMessage() for record in caplog.records]
    assert str(tmp_path / "var/lib/dpkg/status") in warning and "kept as last seen" in warning


def line_by_line(text: str) -> list[Record | str]:
    """The reference parse: every stanza by `_fast` or `_generic` (the path of stanzas the regex does not match);
    a skipped stanza as its reason."""
    parsed: list[Record | str] = []
    for stanza in text.split("\n\n"):
        if stanza.strip():
            state, package, _ = _fast(stanza.lstrip("\n")) or _generic(stanza.strip("\n"))
            parsed.append(package if state is None else Record(  # type: ignore[arg-type]
                state, package, "\nMulti-Arch: same\n" in stanza + "\n"))
    return parsed


# Lines a stanza may be made of: the fields the parser reads (canonical or not), others, continuations, comments,
# and lines that make a stanza malformed.
STANZA_LINES = st.sampled_from([
    "Status: install ok installed", "Status: deinstall ok installed", "Status: purge ok not-installed",
    "Status: install ok  installed", "Status: install ok unpacked", "status: install ok installed",
    "Installed-Size: 42", "Installed-Size: 7M", "Installed-Size: many", "Architecture: amd64",
    "Architecture:  all ", "Version: 1.0-1", "Version: 2:3.4~rc1-1+b2", "Version: 1.0 ", "Version:  9.9", "Version: 1",
    "Version:",
    "Description: a summary", "Description:  spaced summary ", " a continuation line", " .", "# a comment",
    "Homepage: https://example.org/", "Homepage:", "Depends: libc6 (>= 2.36)", "Multi-Arch: same",
    "Package: second", "Fïeld: value", ":colon first", "no colon here", "\tTabbed: continuation",
])
STANZA = st.builds(lambda name, lines: "\n".join([f"Package: {name}", *lines]),
                   st.sampled_from(["bash", "lib-x", "two words", "tab\tname", ""]),
                   st.lists(STANZA_LINES, max_size=12))


@settings(max_examples=600, deadline=None)
@given(st.lists(STANZA, min_size=1, max_size=4), st.sampled_from(["\n\n", "\n\n\n"]))
def test_whole_stanza_regex_parses_as_the_line_by_line_path(stanzas: list[str], separator: str) -> None:
    text = separator.join(stanzas) + "\n\n"
    parsed = parse_status(text.encode())
    skipped = [reason for reason in line_by_line(text) if isinstance(reason, str)]
    assert list(parsed.records) == [record for record in line_by_line(text) if isinstance(record, Record)]
    assert [problem.reason.startswith("stanza ") for problem in parsed.problems].count(True) == len(skipped)
    assert parsed.skipped == bool(skipped)


# Stanzas that parse (in dpkg's order or not): a reparse reuses records only after a parse without problems.
GOOD_STANZA = st.builds(
    lambda name, version, extra, home, shuffled: "\n".join(
        [f"Package: {name}", *(reversed if shuffled else list)([
            "Status: install ok installed", "Installed-Size: 3", "Architecture: amd64", f"Version: {version}",
            *extra, "Description: summary", " more", *(["Homepage: https://example.org/"] if home else [])])]),
    st.sampled_from(["bash", "zsh", "libc6"]), st.sampled_from(["1", "1.0-2", "2:3"]),
    st.lists(st.sampled_from(["Depends: libc6", "Multi-Arch: same", " continued", "# comment"]), max_size=3),
    st.booleans(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(st.lists(GOOD_STANZA, min_size=1, max_size=6), st.lists(GOOD_STANZA, max_size=2), st.integers(0, 6),
       st.integers(0, 2), st.sampled_from(["", "\n", "x", "\n\n"]), st.integers(0, 400), st.booleans())
def test_a_reparse_after_a_change_equals_a_parse_from_scratch(stanzas: list[str], inserted: list[str], at: int,
                                                             removed: int, typed: str, where: int,
                                                             at_a_boundary: bool) -> None:
    before = "\n\n".join(stanzas) + "\n\n"
    after = "\n\n".join([*stanzas[:at], *inserted, *stanzas[at + removed:]]) + "\n\n"
    if at_a_boundary:  # within two characters of an empty line, where the reuse of records is decided
        boundaries = [index for index in range(len(after)) if after.startswith("\n\n", index)]
        where = max(0, boundaries[where % len(boundaries)] + where % 5 - 2)
    after = after[:where] + typed + after[where:]  # and a keystroke somewhere (maybe in an empty line)
    for old, new in ((before, after), (after, before)):
        previous = parse_status(old.encode())
        assert parse_status(new.encode(), previous) == parse_status(new.encode())


@settings(max_examples=300, deadline=None)
@given(st.text("ab\n", max_size=40), st.text("ab\n", max_size=40), st.text("ab", max_size=40),
       st.sampled_from([1, 3, 7, 65536]))
def test_shared_start_and_end_are_measured_exactly(one: str, other: str, shared: str, chunk: int) -> None:
    with mock.patch.object(dpkg, "_CHUNK", chunk):
        prefix = dpkg._common_prefix(shared + one, shared + other)
        suffix = dpkg._common_suffix(one + shared, other + shared, min(len(one), len(other)) + len(shared))
    assert prefix == len(os.path.commonprefix([shared + one, shared + other]))
    assert suffix == len(os.path.commonprefix([(one + shared)[::-1], (other + shared)[::-1]]))


def test_a_reparse_reuses_the_records_of_unchanged_stanzas() -> None:
    many = "".join(f"Package: p{index}\nStatus: install ok installed\nInstalled-Size: 1\nArchitecture: all\n"
                   f"Version: 1.{index}\nDescription: number {index}\n\n" for index in range(50))
    first = parse_status(many.encode())
    second = parse_status(many.replace("Version: 1.20\n", "Version: 2.0\n").encode(), first)
    assert second.records[19] is first.records[19] and second.records[21] is first.records[21]
    assert second.records[20].package.version == "2.0" and second == parse_status(second.text.encode())


def test_canonical_stanzas_take_the_regex_path_and_odd_ones_do_not() -> None:
    canonical = ("Package: bash\nStatus: install ok installed\nInstalled-Size: 7\nArchitecture: amd64\n"
                 "Version: 5.2-1\nDescription: GNU shell\n more\nHomepage: https://gnu.org/\n\n")
    assert parse_status(canonical.encode()).records == (Record("installed", Package(
        "dpkg", "bash", "5.2-1", architecture="amd64", size=7 * 1024, description="GNU shell",
        reference="https://gnu.org/")),)
    home_first = canonical.replace("Homepage: https://gnu.org/\n", "").replace(
        "Status:", "Homepage: https://gnu.org/\nStatus:")
    assert parse_status(home_first.encode()).records == parse_status(canonical.encode()).records
    garbled = canonical.replace(" more\n", "more\n") + "Package: zsh\nStatus: install ok installed\n"
    parsed = parse_status(garbled.encode())
    assert parsed.records == () and parsed.skipped
    assert [(problem.line, problem.reason) for problem in parsed.problems] == [
        (1, "stanza with a line without ':' (not 'Field: value')"),
        (10, "stanza where the file ends (it was being written?)")]


# --------------------------------------------------------------------------------------------------------
# rpm
# --------------------------------------------------------------------------------------------------------

def test_real_rpm_header_blob_is_decoded() -> None:
    package = package_of(parse_header(REAL_RPM_HEADER))
    assert package == Package(type="rpm", name="hostaudit-probe", version="1.2.3", release="4", epoch=2,
                              architecture="noarch", installed=REAL_RPM_INSTALLTIME, size=6,
                              description="A tiny package for hostaudit's tests",
                              reference="https://example.org/hostaudit-probe", license="MIT")


def test_our_encoder_and_rpms_headers_decode_alike() -> None:
    ours = rpm_header(name="hostaudit-probe", version="1.2.3", release="4", epoch=2, arch="noarch",
                      summary="A tiny package for hostaudit's tests", size=6, installtime=REAL_RPM_INSTALLTIME,
                      license="MIT", url="https://example.org/hostaudit-probe")
    assert package_of(parse_header(ours)) == package_of(parse_header(REAL_RPM_HEADER))


@pytest.mark.parametrize("blob, reason", [
    (b"", "shorter than a header"),
    (struct.pack(">II", 3, 10) + b"\0" * 8, "cannot hold 3 index entries"),
    (struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 40, 1) + b"abc\0", "points outside the data"),
    (struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 0, 1) + b"abcd", "runs past the end"),
    (struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1001, 6, 0, 1) + b"1.0\0", "no NAME"),
    (rpm_header(name="nover"), "nover has no VERSION"),
])
def test_bad_rpm_headers_are_refused_with_a_reason(blob: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        package_of(parse_header(blob))


def test_rpm_packages_from_sqlite_and_their_changes(tmp_path: Path) -> None:
    write_rpmdb(tmp_path, [rpm_probe(), rpm_probe(name="kernel", version="6.5.6", release="300.fc39"),
                           rpm_probe(name="gone", version="2")])
    dataset = make_dataset(tmp_path)
    snapshot = dataset.observe()
    probe = document(dataset.state_report(snapshot)[2])
    assert probe["message"] == "Package probe (1.0) is already installed"
    assert probe["package"] == {"name": "probe", "version": "1.0", "architecture": "x86_64",
                                "installed": iso_millis(INSTALLED_AT), "size": 4096, "description": "A probe",
                                "reference": "https://example.org/probe", "license": "MIT", "type": "rpm"}
    assert probe["system"]["audit"]["package"]["release"] == "1.fc39"
    # Written as rpm writes: into the WAL. A second kernel is installed beside the first; probe is updated.
    events = change(dataset, lambda: write_rpmdb(tmp_path, [
        rpm_probe(release="2.fc39"), rpm_probe(name="kernel", version="6.5.6", release="300.fc39"),
        rpm_probe(name="kernel", version="6.6.1", release="100.fc39"), rpm_probe(name="new", version="3")]))
    assert by_action(events) == {"package_updated": ["probe"], "package_installed": ["kernel", "new"],
                                 "package_removed": ["gone"]}
    assert events[0].fields["system"]["audit"]["changes"] == {
        "fields": ["system.audit.package.release"], "previous": {"system": {"audit": {"package": {"release": "1.fc39"}}}}}
    assert events[1].message == "Package kernel (6.6.1) installed"


def test_a_corrupt_rpm_header_is_warned_and_its_package_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_rpmdb(tmp_path, [rpm_probe(), rpm_probe(name="other", version="2")])
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        events = change(dataset, lambda: write_rpmdb(tmp_path, [rpm_probe(version="1.1"), b"\x00\x00\x00\x09garbage"]))
    assert by_action(events) == {"package_updated": ["probe"]}
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{tmp_path / 'var/lib/rpm/rpmdb.sqlite'}: skipped 1 unreadable package headers "
                              "(header 4: 9 index entries and 1734439522 data bytes exceed rpm's limits)")
    assert warning.endswith("those packages are kept as last seen")


def test_rpm_database_in_usr_lib_sysimage_and_old_berkeley_db(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_rpmdb(tmp_path, [rpm_probe()], directory="usr/lib/sysimage/rpm")
    assert [package.name for package in make_dataset(tmp_path).observe()["databases"]["rpm"]["packages"]] == ["probe"]
    old = tmp_path / "old"
    (old / "var/lib/rpm").mkdir(parents=True)
    (old / "var/lib/rpm/Packages").write_bytes(b"\x00\x06\x15\x61" + b"\0" * 4092)  # a Berkeley DB hash file
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        snapshot = make_dataset(old, databases=["rpm"]).observe()
    assert snapshot["databases"]["rpm"]["packages"] == []
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{old / 'var/lib/rpm/Packages'} is an rpm database in the Berkeley DB format, "
                              "which hostaudit does not read; convert it with `rpmdb --rebuilddb`")


def test_a_real_rpmdb_made_by_rpm_is_read(tmp_path: Path) -> None:
    """With rpm installed (Debian's `rpm` package), a database rpm itself wrote; skipped without it."""
    if shutil.which("rpm") is None or shutil.which("rpmbuild") is None:
        pytest.skip("rpm and rpmbuild are not installed (apt-get install rpm)")
    top = tmp_path / "build"
    spec = top / "probe.spec"
    top.mkdir()
    spec.write_text("Name: hostaudit-real\nVersion: 0.9\nRelease: 7\nSummary: Real\nLicense: MIT\n"
                    "BuildArch: noarch\n%description\nReal.\n%files\n")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True,
                   capture_output=True, timeout=120)
    [rpm_file] = list((top / "RPMS").rglob("*.rpm"))
    dbpath = tmp_path / "root/var/lib/rpm"
    dbpath.mkdir(parents=True)
    subprocess.run(["rpm", "--dbpath", str(dbpath), "--initdb"], check=True, capture_output=True, timeout=60)
    subprocess.run(["rpm", "--dbpath", str(dbpath), "-i", "--nodeps", "--justdb", str(rpm_file)], check=True,
                   capture_output=True, timeout=60)
    if not (dbpath / "rpmdb.sqlite").exists():
        pytest.skip("this rpm does not use the sqlite backend")
    [package] = make_dataset(tmp_path / "root").observe()["databases"]["rpm"]["packages"]
    assert (package.name, package.version, package.release, package.architecture, package.license) == \
        ("hostaudit-real", "0.9", "7", "noarch", "MIT")


# --------------------------------------------------------------------------------------------------------
# apk
# --------------------------------------------------------------------------------------------------------

def write_apk(root: Path, text: str) -> Path:
    path = root / "lib/apk/db/installed"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_apk_installed_packages_and_a_cut_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_apk(tmp_path, APK_INSTALLED)
    dataset = make_dataset(tmp_path)
    musl = document(dataset.state_report(dataset.observe())[1])
    assert musl["package"] == {"name": "musl", "version": "1.2.4-r2", "architecture": "x86_64", "size": 622592,
                               "description": "the musl c library (libc) implementation",
                               "reference": "https://musl.libc.org/", "license": "MIT", "type": "apk"}
    with caplog.at_level(logging.WARNING, logger="hostaudit.package"):
        events = change(dataset, lambda: path.write_text(APK_INSTALLED[:APK_INSTALLED.index("U:https://busybox")]))
    assert events == []
    assert any(f"{path}: line 18: stanza where the file ends" in record.getMessage() for record in caplog.records)
    events = change(dataset, lambda: path.write_text(APK_INSTALLED.split("\n\n")[0] + "\n\nP:curl\nV:8.5.0-r0\n\n"))
    assert by_action(events) == {"package_installed": ["curl"], "package_removed": ["busybox"]}


# --------------------------------------------------------------------------------------------------------
# The real dpkg database of this machine
# --------------------------------------------------------------------------------------------------------

def test_the_real_dpkg_database_matches_dpkg_query() -> None:
    if shutil.which("dpkg-query") is None or not Path("/var/lib/dpkg/status").exists():
        pytest.skip("not a dpkg system")
    root = make_dataset(Path("/"), databases=["dpkg"])
    entry = root.observe()["databases"]["dpkg"]
    fields = "${db:Status-Status}\t${Package}\t${Architecture}\t${Version}\t${Installed-Size}\n"
    listed = subprocess.run(["dpkg-query", "-W", "-f", fields], check=True, capture_output=True, text=True).stdout
    expected = {tuple(line.split("\t")[1:]) for line in listed.splitlines()
                if line.split("\t")[0] not in ("not-installed", "config-files")}
    ours = {(p.name, p.architecture, p.version, str(p.size // 1024) if p.size is not None else "")
            for p in entry["packages"]}
    assert ours == expected and entry["complete"]
    assert all(p.installed is not None for p in entry["packages"]), "every package has its file list"
    for event in root.state_report(root.observe())[:50]:
        document(event)


# --------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------

def test_options_default_and_choices() -> None:
    assert parse_options(None) == PackageOptions(databases=("dpkg", "rpm", "apk"))
    assert parse_options({"databases": ["RPM", "dpkg"]}).databases == ("dpkg", "rpm")
    assert parse_options({"databases": "apk"}).databases == ("apk",)


@pytest.mark.parametrize("raw, message", [
    ({"databases": ["yum"]}, "package.databases: 'yum' is not one of dpkg, rpm, apk"),
    ({"databases": []}, "package.databases: [] is not a non-empty list of dpkg, rpm, apk"),
    ({"databases": ["rpm", "rpm"]}, "package.databases: ['rpm', 'rpm'] names a database twice"),
    ({"databse": ["rpm"]}, "package.databse: unknown setting (did you mean databases?)"),
    ({"rpm_drop_to_uid": 0}, "package.rpm_drop_to_uid: unknown setting (known: databases)"),
])
def test_bad_options_are_one_line_naming_the_setting(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_options(raw)
    assert str(error.value) == message


# --------------------------------------------------------------------------------------------------------
# Sample document
# --------------------------------------------------------------------------------------------------------

def sample_document(root: Path) -> dict[str, Any]:
    """The `package_updated` document for zstd, as the runtime would write it."""
    write_dpkg(root, BASE_STATUS)
    dataset = make_dataset(root)
    before = dataset.observe()
    (root / "var/lib/dpkg/info/zstd.list").unlink()
    write_dpkg(root, BASE_STATUS.replace("Version: 1.5.4+dfsg2-5", "Version: 1.5.5+dfsg2-1").replace(
        "Installed-Size: 1887", "Installed-Size: 1901"), lists=("zstd",), installed_at=1_700_018_660)
    [event] = dataset.diff(before, dataset.observe(), at_startup=False)
    common = sample_common({"id": HOST_ID, "name": "ubuntu-jammy", "hostname": "ubuntu-jammy"})
    event = dataclasses.replace(event, timestamp=1_700_018_680.123)
    return event.stamped(1).to_document(common)


def test_sample_document_has_the_fields_we_emit(tmp_path: Path) -> None:
    sample = checked_sample("package", sample_document(tmp_path))
    assert sample["message"] == "Package zstd (1.5.5+dfsg2-1) updated"
    assert sample["event"]["action"] == "package_updated"
