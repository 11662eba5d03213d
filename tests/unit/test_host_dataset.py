"""Tests of the host dataset (actors/datasets/host/dataset.py) and the hostfs file helper (actors/hostfs/procfs.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import platform
import re
import socket
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from actors.hostfs import host_facts, procfs
from actors.datasets import DatasetContext, load_dataset
from actors.datasets.host import dataset as host_dataset
from actors.datasets.host.dataset import format_uptime
from actors.hostfs.host_facts import describe_host, format_mac
from actors.event import CHANGE, STATE, Event
from tests.sample_support import checked_sample, sample_common, sample_path

SAMPLE = sample_path("host")

MACHINE_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
NEW_MACHINE_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BOOT_TIME = 1_700_000_000
BOOT_ID = "6a2f4c1e-3b5d-4e7f-8a9b-0c1d2e3f4a5b"
UPTIME_5H_11M = "18660.25 74000.10\n"  # 5 hours, 11 minutes, 0.25 s
SAMPLE_IPS = ["10.0.2.15", "fe80::2d:fdff:fe81:e747"]
SAMPLE_MACS = ["02-2D-FD-81-E7-47"]

UBUNTU_OS_RELEASE = """\
PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=jammy
"""

PROC_STAT_TEMPLATE = """\
cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0
intr 199292418 0 9 0 0 0 0 3 0 1 0 0 0 0 0 0 0
ctxt 302473219
btime {btime}
processes 1118396
procs_running 1
procs_blocked 0
"""


def tzif_fixed_zone(abbreviation: str, offset_seconds: int) -> bytes:
    """Return a minimal TZif (version 1) file for a zone with one fixed offset and no transitions."""
    designation = abbreviation.encode() + b"\0"
    header = b"TZif" + b"\0" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, len(designation))
    return header + struct.pack(">lBB", offset_seconds, 0, 0) + designation


def build_hostfs(
    root: Path,
    *,
    machine_id: str | None = MACHINE_ID,
    hostname: str = "ubuntu-jammy",
    kernel: str = "5.15.0-105-generic",
    boot_time: int = BOOT_TIME,
    uptime: str = UPTIME_5H_11M,
    os_release: str | bytes | None = UBUNTU_OS_RELEASE,
    boot_id: str = BOOT_ID,
    localtime: bytes | None = None,
    cgroup: str | None = "0::/init.scope\n",
) -> Path:
    """Write a synthetic host root under `root` with the files the host dataset reads; return `root`."""
    files: dict[str, str | bytes | None] = {
        "etc/machine-id": None if machine_id is None else machine_id + "\n",
        "etc/os-release": os_release,
        "etc/localtime": tzif_fixed_zone("CET", 3600) if localtime is None else localtime,
        "proc/stat": PROC_STAT_TEMPLATE.format(btime=boot_time),
        "proc/uptime": uptime,
        "proc/sys/kernel/hostname": hostname + "\n",
        "proc/sys/kernel/osrelease": kernel + "\n",
        "proc/sys/kernel/random/boot_id": boot_id + "\n",
        "proc/1/cgroup": cgroup,
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink(missing_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Replace the live interfaces with fixed ones; tests change `network["ip"]` / `["mac"]` in place."""
    addresses = {"ip": list(SAMPLE_IPS), "mac": list(SAMPLE_MACS)}
    monkeypatch.setattr(host_facts, "read_network", lambda: (list(addresses["ip"]), list(addresses["mac"])))
    return addresses


@pytest.fixture
def hostfs(tmp_path: Path, network: dict[str, list[str]]) -> Path:
    return build_hostfs(tmp_path / "hostfs")


def observe(root: Path) -> dict[str, Any]:
    return load_dataset("host", DatasetContext(hostfs=root)).observe()


def diff(previous: Any, current: Any, at_startup: bool = False) -> list[Event]:
    return list(host_dataset.create(DatasetContext(hostfs=Path("/"))).diff(previous, current, at_startup))


def audit(event: Event) -> dict[str, Any]:
    return event.fields["system"]["audit"]


# --------------------------------------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------------------------------------

def test_snapshot_reads_every_file_under_hostfs(hostfs: Path) -> None:
    snapshot = observe(hostfs)

    assert snapshot["id"] == MACHINE_ID
    assert snapshot["hostname"] == "ubuntu-jammy"
    assert snapshot["boottime"] == BOOT_TIME
    assert snapshot["uptime_ns"] == 18_660_250_000_000
    assert snapshot["boot_id"] == BOOT_ID
    assert snapshot["os"] == {
        "type": "linux", "platform": "ubuntu", "name": "Ubuntu", "version": "22.04.4 LTS (Jammy Jellyfish)",
        "codename": "jammy", "family": "debian", "kernel": "5.15.0-105-generic",
    }
    assert snapshot["timezone"] == {"name": "CET", "offset_sec": 3600}
    assert snapshot["containerized"] is False
    assert snapshot["ip"] == SAMPLE_IPS and snapshot["mac"] == SAMPLE_MACS


def test_snapshot_survives_a_json_round_trip(hostfs: Path) -> None:
    snapshot = observe(hostfs)
    restored = json.loads(json.dumps(snapshot))

    assert restored == snapshot
    assert diff(restored, snapshot) == []
    assert diff(snapshot, restored) == []


def test_hostname_is_reported_in_lower_case_like_go_sysinfo(tmp_path: Path, network: dict) -> None:
    assert observe(build_hostfs(tmp_path, hostname="Web-01.Example"))["hostname"] == "web-01.example"


@pytest.mark.parametrize(
    ("cgroup", "marker_file", "expected"),
    [
        ("0::/init.scope\n", None, False),
        ("12:pids:/docker/81438f4655cd\n1:name=systemd:/docker/81438f4655cd\n", None, True),
        ("11:perf_event:/kubepods/burstable/podb8/9f99\n", None, True),
        ("0::/\n", ".dockerenv", True),
        ("0::/\n", "run/.containerenv", True),
        (None, None, None),
    ],
)
def test_containerized_comes_from_cgroup_of_pid_1_and_marker_files(
    tmp_path: Path, network: dict, cgroup: str | None, marker_file: str | None, expected: bool | None
) -> None:
    root = build_hostfs(tmp_path, cgroup=cgroup)
    if marker_file:
        (root / marker_file).parent.mkdir(parents=True, exist_ok=True)
        (root / marker_file).touch()

    snapshot = observe(root)

    assert snapshot.get("containerized") is expected
    assert "containerized" not in describe_host(root), "not an ECS host field: kept under system.audit.host"


def test_os_family_falls_back_to_id_like(tmp_path: Path, network: dict) -> None:
    os_release = 'NAME="Pop!_OS"\nVERSION="22.04 LTS"\nID=pop\nID_LIKE="ubuntu debian"\n'

    os_info = observe(build_hostfs(tmp_path, os_release=os_release))["os"]

    assert (os_info["platform"], os_info["family"], os_info["name"]) == ("pop", "debian", "Pop!_OS")


def test_redhat_family_takes_codename_from_distrib_release(tmp_path: Path, network: dict) -> None:
    os_release = 'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\n'
    root = build_hostfs(tmp_path, os_release=os_release)
    (root / "etc" / "centos-release").write_text("CentOS Linux release 7.9.2009 (Core)\n")

    os_info = observe(root)["os"]

    assert os_info["family"] == "redhat" and os_info["codename"] == "Core" and os_info["version"] == "7 (Core)"


def test_without_os_release_the_distrib_release_file_is_used(tmp_path: Path, network: dict) -> None:
    root = build_hostfs(tmp_path, os_release=None)
    (root / "etc" / "centos-release").write_text("CentOS release 6.10 (Final)\n")

    os_info = observe(root)["os"]

    assert os_info == {"type": "linux", "platform": "centos", "name": "CentOS", "version": "6.10 (Final)",
                       "codename": "Final", "family": "redhat", "kernel": "5.15.0-105-generic"}


def test_garbage_os_release_never_raises_and_keeps_what_it_can(tmp_path: Path, network: dict) -> None:
    garbage = (
        b"\xff\xfe not utf-8 \xc3\x28\n"
        b"just some words without an equals sign\n"
        b"=value without a key\n"
        b"# NAME=commented out\n"
        b"NAME='Odd \xe9 Linux'\n"
        b'VERSION="1.0 \\"beta\\""\n'
        b"ID=odd\n"
    )

    snapshot = observe(build_hostfs(tmp_path, os_release=garbage))

    assert snapshot["os"]["name"] == "Odd \ufffd Linux"
    assert snapshot["os"]["version"] == '1.0 "beta"'
    assert snapshot["os"]["platform"] == "odd" and "family" not in snapshot["os"]
    json.dumps(snapshot)  # still serialisable


def test_missing_machine_id_omits_host_id_and_warns_once(
    tmp_path: Path, network: dict, caplog: pytest.LogCaptureFixture
) -> None:
    root = build_hostfs(tmp_path, machine_id=None)
    (root / "etc" / "machine-id").write_text("   \n")  # present but empty, as in some images

    with caplog.at_level(logging.WARNING, logger="hostaudit.host"):
        snapshot = observe(root)
        observe(root)
        described = describe_host(root)

    assert "id" not in snapshot and "id" not in described
    machine_id_warnings = [record for record in caplog.records if "machine-id" in record.getMessage()]
    assert len(machine_id_warnings) == 1
    assert str(root) in machine_id_warnings[0].getMessage()


def test_machine_id_falls_back_to_the_dbus_copy(tmp_path: Path, network: dict) -> None:
    root = build_hostfs(tmp_path, machine_id=None)
    (root / "var" / "lib" / "dbus").mkdir(parents=True)
    (root / "var" / "lib" / "dbus" / "machine-id").write_text(NEW_MACHINE_ID + "\n")

    assert observe(root)["id"] == NEW_MACHINE_ID


def test_an_empty_hostfs_gives_a_sparse_snapshot_and_warnings_instead_of_errors(
    tmp_path: Path, network: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hostaudit.host"):
        snapshot = observe(tmp_path)
        described = describe_host(tmp_path)
        events = host_dataset.create(DatasetContext(hostfs=tmp_path)).state_report(snapshot)

    assert not {"id", "hostname", "boottime", "uptime_ns", "boot_id", "containerized"} & snapshot.keys()
    assert snapshot["os"] == {"type": "linux"}
    assert snapshot["timezone"] == {"name": "UTC", "offset_sec": 0}
    assert "id" not in described and "name" not in described
    assert events[0].message == " host  (IP: 10.0.2.15) is up for 0 days, 0 hours, 0 minutes"
    assert "null" not in json.dumps(events[0].to_document({}))  # no null anywhere
    warned = " ".join(record.getMessage() for record in caplog.records)
    for expected in ("machine-id", "hostname", "btime", "os-release", "localtime"):
        assert expected in warned


def test_a_directory_in_place_of_a_file_is_reported_not_raised(
    tmp_path: Path, network: dict, caplog: pytest.LogCaptureFixture
) -> None:
    root = build_hostfs(tmp_path)
    (root / "proc" / "sys" / "kernel" / "osrelease").unlink()
    (root / "proc" / "sys" / "kernel" / "osrelease").mkdir()

    with caplog.at_level(logging.WARNING, logger="hostaudit.host"):
        snapshot = observe(root)

    assert "kernel" not in snapshot["os"]
    assert any("cannot read" in record.getMessage() and "osrelease" in record.getMessage()
               for record in caplog.records)


def test_describe_host_is_the_root_host_object_without_uptime(hostfs: Path) -> None:
    described = describe_host(hostfs)

    assert described == {
        "id": MACHINE_ID, "name": "ubuntu-jammy", "hostname": "ubuntu-jammy", "architecture": os.uname().machine,
        "ip": SAMPLE_IPS, "mac": SAMPLE_MACS, "boot": {"id": BOOT_ID},
        "os": {"family": "debian", "kernel": "5.15.0-105-generic", "name": "Ubuntu", "platform": "ubuntu",
               "type": "linux", "version": "22.04.4 LTS (Jammy Jellyfish)"},
    }


# --------------------------------------------------------------------------------------------------------
# State event
# --------------------------------------------------------------------------------------------------------

def test_state_event_carries_auditbeat_fields_and_message(hostfs: Path) -> None:
    [event] = host_dataset.create(DatasetContext(hostfs=hostfs)).state_report(observe(hostfs))

    assert (event.dataset, event.action, event.kind) == ("host", "host", STATE)
    assert (event.category, event.type) == (("host",), ("info",))
    assert event.message == "Ubuntu host ubuntu-jammy (IP: 10.0.2.15) is up for 0 days, 5 hours, 11 minutes"
    audit_host = audit(event)["host"]
    assert audit_host["uptime"] == 18_660_250_000_000
    assert audit_host["boottime"] == "2023-11-14T22:13:20.000Z"
    assert audit_host["timezone"] == {"name": "CET", "offset": {"sec": 3600}}
    assert audit_host["os"]["kernel"] == "5.15.0-105-generic" and audit_host["os"]["type"] == "linux"
    assert event.fields["host"]["uptime"] == 18_660
    assert event.fields["host"]["name"] == event.fields["host"]["hostname"] == "ubuntu-jammy"
    assert "changes" not in audit(event)


@pytest.mark.parametrize(
    ("uptime_seconds", "expected"),
    [
        (0, "0 days, 0 hours, 0 minutes"),
        (59.9, "0 days, 0 hours, 0 minutes"),
        (60, "0 days, 0 hours, 1 minute"),
        (3600, "0 days, 1 hour, 0 minutes"),
        (86_400, "1 day, 0 hours, 0 minutes"),
        (86_400 + 3600 + 60, "1 day, 1 hour, 1 minute"),
        (2 * 86_400 + 2 * 3600 + 2 * 60 + 59, "2 days, 2 hours, 2 minutes"),
        (5 * 3600 + 11 * 60, "0 days, 5 hours, 11 minutes"),
    ],
)
def test_uptime_is_formatted_like_auditbeat(uptime_seconds: float, expected: str) -> None:
    assert format_uptime(int(uptime_seconds * 1_000_000_000)) == expected


def test_state_message_uses_the_first_ipv4_and_singular_units(tmp_path: Path, network: dict) -> None:
    network["ip"] = ["192.168.1.7", "fd00::7"]
    snapshot = observe(build_hostfs(tmp_path, uptime="90060.00 1.00\n"))  # 1 day, 1 hour, 1 minute

    [event] = host_dataset.create(DatasetContext(hostfs=tmp_path)).state_report(snapshot)

    assert event.message == "Ubuntu host ubuntu-jammy (IP: 192.168.1.7) is up for 1 day, 1 hour, 1 minute"


# --------------------------------------------------------------------------------------------------------
# Change events
# --------------------------------------------------------------------------------------------------------

def test_first_run_emits_no_change_events(hostfs: Path) -> None:
    assert diff(None, observe(hostfs)) == []


def test_hostname_change_emits_hostname_changed_with_the_old_name(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, hostname="web-02"))

    [event] = diff(before, after)

    assert (event.action, event.kind, event.type) == ("hostname_changed", CHANGE, ("change",))
    assert event.message == "Hostname changed to web-02 (IP: 10.0.2.15)"
    assert audit(event)["changes"] == {
        "fields": ["host.hostname", "host.name"],
        "previous": {"host": {"hostname": "ubuntu-jammy", "name": "ubuntu-jammy"}},
    }
    assert event.fields["host"]["hostname"] == "web-02"


def test_boot_time_later_by_100_seconds_emits_reboot(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, boot_time=BOOT_TIME + 100, uptime="30.00 1.00\n"))

    [event] = diff(before, after)

    assert (event.action, event.kind, event.type) == ("reboot", CHANGE, ("start",))
    assert event.message == "Host ubuntu-jammy (IP: 10.0.2.15) restarted"
    assert audit(event)["changes"] == {
        "fields": ["system.audit.host.boottime"],
        "previous": {"system": {"audit": {"host": {"boottime": "2023-11-14T22:13:20.000Z"}}}},
    }


def test_boot_time_later_by_one_second_is_not_a_reboot(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, boot_time=BOOT_TIME + 1))

    assert diff(before, after) == []


def test_a_new_boot_id_is_a_reboot_even_when_the_clock_went_back(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    new_boot_id = "11111111-2222-3333-4444-555555555555"
    after = observe(build_hostfs(tmp_path, boot_time=BOOT_TIME - 3600, boot_id=new_boot_id))

    [event] = diff(before, after)

    assert event.action == "reboot"
    assert audit(event)["changes"]["fields"] == ["system.audit.host.boottime", "host.boot.id"]
    assert audit(event)["changes"]["previous"]["host"] == {"boot": {"id": BOOT_ID}}


def test_machine_id_change_emits_two_host_id_changed_events(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, machine_id=NEW_MACHINE_ID))

    old_host, new_host = diff(before, after)

    assert old_host.action == new_host.action == "host_id_changed"
    assert old_host.message == new_host.message == "ID of host ubuntu-jammy (IP: 10.0.2.15) has changed"
    assert old_host.fields["host"]["id"] == MACHINE_ID
    assert audit(old_host)["host"]["new_id"] == NEW_MACHINE_ID and "old_id" not in audit(old_host)["host"]
    assert new_host.fields["host"]["id"] == NEW_MACHINE_ID
    assert audit(new_host)["host"]["old_id"] == MACHINE_ID and "new_id" not in audit(new_host)["host"]
    for event in (old_host, new_host):
        assert audit(event)["changes"] == {"fields": ["host.id"], "previous": {"host": {"id": MACHINE_ID}}}


def test_kernel_change_emits_host_changed_listing_only_the_kernel(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, kernel="6.8.0-31-generic"))

    [event] = diff(before, after)

    assert (event.action, event.type) == ("host_changed", ("change",))
    assert event.message == "Host ubuntu-jammy (IP: 10.0.2.15) changed"
    assert audit(event)["changes"] == {
        "fields": ["host.os.kernel"],
        "previous": {"host": {"os": {"kernel": "5.15.0-105-generic"}}},
    }


def test_ip_change_emits_host_changed_with_the_old_addresses(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    network["ip"] = ["10.0.2.16", "fe80::2d:fdff:fe81:e747"]
    after = observe(build_hostfs(tmp_path))

    [event] = diff(before, after)

    assert event.action == "host_changed"
    assert event.message == "Host ubuntu-jammy (IP: 10.0.2.16) changed"
    assert audit(event)["changes"] == {"fields": ["host.ip"], "previous": {"host": {"ip": SAMPLE_IPS}}}


def test_mac_change_emits_host_changed_with_the_old_macs(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    network["mac"] = ["02-2D-FD-81-E7-48"]
    after = observe(build_hostfs(tmp_path))

    [event] = diff(before, after)

    assert audit(event)["changes"] == {"fields": ["host.mac"], "previous": {"host": {"mac": SAMPLE_MACS}}}


def test_timezone_change_lists_the_audit_fields(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, localtime=tzif_fixed_zone("EET", 7200)))

    [event] = diff(before, after)

    assert audit(event)["changes"] == {
        "fields": ["system.audit.host.timezone.name", "system.audit.host.timezone.offset.sec"],
        "previous": {"system": {"audit": {"host": {"timezone": {"name": "CET", "offset": {"sec": 3600}}}}}},
    }


def test_reordered_interfaces_are_no_change(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    network["ip"] = list(reversed(SAMPLE_IPS))

    assert diff(before, observe(build_hostfs(tmp_path))) == []


def test_uptime_or_codename_change_alone_emits_nothing(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, uptime="99999.00 1.00\n",
                                 os_release=UBUNTU_OS_RELEASE.replace("=jammy", "=noble")))

    assert after["os"]["codename"] == "noble" and after["uptime_ns"] != before["uptime_ns"]
    assert diff(before, after) == []


def test_simultaneous_changes_come_in_auditbeat_order(tmp_path: Path, network: dict) -> None:
    before = observe(build_hostfs(tmp_path))
    after = observe(build_hostfs(tmp_path, machine_id=NEW_MACHINE_ID, boot_time=BOOT_TIME + 600,
                                 hostname="web-02", kernel="6.8.0-31-generic"))

    actions = [event.action for event in diff(before, after)]

    assert actions == ["host_id_changed", "host_id_changed", "reboot", "hostname_changed", "host_changed"]


# --------------------------------------------------------------------------------------------------------
# Network formatting
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("02:2d:fd:81:e7:47", "02-2D-FD-81-E7-47"),
        ("2:d:fd:81:e7:47", "02-0D-FD-81-E7-47"),
        ("02-2D-FD-81-E7-47", "02-2D-FD-81-E7-47"),
        ("00:00:00:00:00:00", ""),
        ("", ""),
        ("zz:00:11:22:33:44", ""),
    ],
)
def test_mac_is_formatted_in_ecs_style(address: str, expected: str) -> None:
    assert format_mac(address) == expected


def test_network_skips_loopback_orders_by_interface_index_and_drops_duplicate_macs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def address(family: int, value: str) -> SimpleNamespace:
        return SimpleNamespace(family=family, address=value)

    link, inet, inet6 = psutil.AF_LINK, socket.AF_INET, socket.AF_INET6
    interfaces = {  # psutil's order differs from the kernel's index order on purpose
        "bond0.10": [address(link, "02:2d:fd:81:e7:47"), address(inet, "10.10.0.5")],
        "lo": [address(link, "00:00:00:00:00:00"), address(inet, "127.0.0.1"), address(inet6, "::1")],
        "eth0": [address(link, "02:2d:fd:81:e7:47"), address(inet, "10.0.2.15"),
                 address(inet6, "fe80::2d:fdff:fe81:e747%eth0"), address(inet6, "::ffff:192.0.2.9")],
        "tun0": [address(link, ""), address(inet6, "fd00::1")],
        "sit0": [address(link, "00:00:00:00")],
    }
    stats = {name: SimpleNamespace(flags="up,loopback,running" if name == "lo" else "up,broadcast,running")
             for name in interfaces}
    indexes = [(1, "lo"), (2, "eth0"), (3, "sit0"), (4, "tun0"), (5, "bond0.10")]
    monkeypatch.setattr(host_facts.psutil, "net_if_addrs", lambda: interfaces)
    monkeypatch.setattr(host_facts.psutil, "net_if_stats", lambda: stats)
    monkeypatch.setattr(host_facts.socket, "if_nameindex", lambda: indexes)

    ips, macs = host_facts.read_network()

    assert ips == ["10.0.2.15", "192.0.2.9", "10.10.0.5", "fe80::2d:fdff:fe81:e747", "fd00::1"]
    assert macs == ["02-2D-FD-81-E7-47"]


def test_live_network_has_no_loopback_and_puts_ipv4_first() -> None:
    ips, macs = host_facts.read_network()

    assert not any(ip.startswith("127.") or ip == "::1" for ip in ips)
    assert all("%" not in ip for ip in ips)
    families = [":" in ip for ip in ips]
    assert families == sorted(families)  # every IPv4 before every IPv6
    assert all(re.fullmatch(r"[0-9A-F]{2}(-[0-9A-F]{2})+", mac) for mac in macs)
    assert len(macs) == len(set(macs)) and "00-00-00-00-00-00" not in macs
    live_non_loopback_ipv4 = {
        entry.address for name, entries in psutil.net_if_addrs().items() for entry in entries
        if entry.family == socket.AF_INET and not entry.address.startswith("127.")
    }
    assert live_non_loopback_ipv4 <= set(ips)


# --------------------------------------------------------------------------------------------------------
# The real host
# --------------------------------------------------------------------------------------------------------

def test_real_host_matches_independent_sources() -> None:
    snapshot = observe(Path("/"))

    assert snapshot["hostname"] == socket.gethostname().lower()
    assert snapshot["os"]["kernel"] == os.uname().release
    assert snapshot["architecture"] == platform.machine()
    machine_id_file = Path("/etc/machine-id")
    if machine_id_file.exists() and machine_id_file.read_text().strip():
        assert snapshot["id"] == machine_id_file.read_text().strip()
    assert abs(snapshot["boottime"] - psutil.boot_time()) <= 2
    assert abs(snapshot["uptime_ns"] / 1e9 - time.clock_gettime(time.CLOCK_BOOTTIME)) < 5
    assert snapshot["timezone"] == {"name": time.strftime("%Z"), "offset_sec": time.localtime().tm_gmtoff}
    try:
        os_release = platform.freedesktop_os_release()
    except OSError:
        os_release = {}
    if os_release:
        assert snapshot["os"]["name"] == os_release.get("NAME", "")
        assert snapshot["os"]["platform"] == os_release.get("ID", "")
    described = describe_host(Path("/"))
    assert described["name"] == snapshot["hostname"] and described.get("id") == snapshot.get("id")


# --------------------------------------------------------------------------------------------------------
# Sample document
# --------------------------------------------------------------------------------------------------------

def sample_document(root: Path) -> dict[str, Any]:
    """Return the `host` state document for the synthetic sample host, as the runtime would write it."""
    build_hostfs(root)
    common = sample_common(describe_host(root))
    [state] = host_dataset.create(DatasetContext(hostfs=root)).state_report(observe(root))
    state = dataclasses.replace(state, timestamp=1_700_018_680.123)
    return state.stamped(1).to_document(common)


def test_sample_document_has_the_fields_we_emit(tmp_path: Path, network: dict) -> None:
    checked_sample("host", sample_document(tmp_path))


# --------------------------------------------------------------------------------------------------------
# procfs helper
# --------------------------------------------------------------------------------------------------------

def test_procfs_read_text_returns_none_for_absent_files(tmp_path: Path) -> None:
    assert procfs.read_text(tmp_path / "missing") is None
    assert procfs.read_text(tmp_path / "missing-dir" / "child") is None
    (tmp_path / "file").write_text("x")
    assert procfs.read_text(tmp_path / "file" / "child") is None  # ENOTDIR
    assert procfs.read_link(tmp_path / "missing-link") is None


def test_procfs_read_text_names_the_path_when_unreadable(tmp_path: Path) -> None:
    with pytest.raises(procfs.Unreadable) as raised:
        procfs.read_text(tmp_path)  # a directory: EISDIR

    assert raised.value.path == tmp_path
    assert str(tmp_path) in str(raised.value)


def test_procfs_permission_denied_is_unreadable_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    class DeniedOpen:
        """The os module, but every open is refused (root ignores file modes, so the error is faked)."""

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def open(path: object, flags: int, mode: int = 0o777) -> int:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(procfs, "os", DeniedOpen())

    with pytest.raises(procfs.Unreadable) as raised:
        procfs.read_text("/etc/shadow")

    assert raised.value.errno == errno.EACCES
    assert str(raised.value) == ("cannot read /etc/shadow: Permission denied "
                                 "(needs more privileges: run as root or grant read access)")


def test_procfs_read_text_replaces_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")

    assert procfs.read_text(tmp_path / "latin1") == "caf\ufffd\n"


def test_procfs_host_path_joins_under_the_host_root() -> None:
    assert procfs.host_path(Path("/hostfs"), "/proc/stat") == Path("/hostfs/proc/stat")
    assert procfs.host_path(Path("/"), "/etc/machine-id") == Path("/etc/machine-id")
