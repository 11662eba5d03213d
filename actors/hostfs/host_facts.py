"""Host facts read under `hostfs`, as go-sysinfo reads them: machine id, hostname, OS, kernel, boot id and
time, uptime, timezone, containerization, IPs and MACs; and the ECS `host` object every event carries."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import psutil

from actors.hostfs import procfs

LOG = logging.getLogger("hostaudit.host")
NANOS_PER_SECOND = 1_000_000_000

OWN_ROOT = Path("/")
# go-sysinfo's search order; the first file with content wins (go-sysinfo stops at the first that exists,
# even if empty, and then reports no ID: we try the next one instead).
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/var/db/dbus/machine-id")
OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
LSB_RELEASE_FILE = "/etc/lsb-release"  # go-sysinfo reads it before os-release, whose keys then win
CONTAINER_MARKER_FILES = ("/.dockerenv", "/run/.containerenv")
CONTAINER_CGROUP_MARKERS = ("docker", ".slice", "lxc", "kubepods")  # go-sysinfo isContainerizedCgroup

# go-sysinfo providers/linux/os.go familyMap, platform -> family. Order matters only for prefix matches.
FAMILY_BY_PLATFORM: dict[str, str] = {
    **dict.fromkeys(("arch", "antergos", "manjaro"), "arch"),
    **dict.fromkeys(
        ("redhat", "fedora", "centos", "scientific", "oraclelinux", "ol", "amzn", "rhel", "almalinux",
         "openeuler", "rocky"),
        "redhat",
    ),
    **dict.fromkeys(("debian", "ubuntu", "raspbian", "linuxmint"), "debian"),
    **dict.fromkeys(("suse", "sles", "opensuse"), "suse"),
}

# go-sysinfo's versionGrok and distribReleaseRegexp (Go's \w is ASCII-only, hence re.ASCII).
VERSION_PATTERN = (
    r"(?P<version>(?P<major>[0-9]+)\.?(?P<minor>[0-9]+)?\.?(?P<patch>\w+)?)(?: \((?P<codename>[-\w ]+)\))?"
)
VERSION_REGEX = re.compile(VERSION_PATTERN, re.ASCII)
DISTRIB_RELEASE_REGEX = re.compile(r"(?P<name>\w+).* " + VERSION_PATTERN, re.ASCII)
UPTIME_REGEX = re.compile(r"(\d+)(?:\.(\d+))?")



# ---------------------------------------------------------------------------------------------------------
# Reading the host
# ---------------------------------------------------------------------------------------------------------

_warned: set[tuple[str, str]] = set()


def _warn_once(hostfs: Path, topic: str, message: str, *args: Any) -> None:
    """Log `message` the first time `topic` goes wrong for this host root; stay quiet on later polls."""
    key = (str(hostfs), topic)
    if key not in _warned:
        _warned.add(key)
        LOG.warning(message, *args)


def _read_host_bytes(hostfs: Path, absolute: str) -> bytes | None:
    """Return a host file's bytes; None when it is absent or unreadable (unreadable warns once)."""
    try:
        return procfs.read_bytes(procfs.host_path(hostfs, absolute))
    except procfs.Unreadable as error:
        _warn_once(hostfs, absolute, "%s; the host fields it feeds are left out", error)
        return None


def _read_host_text(hostfs: Path, absolute: str) -> str | None:
    """Return a host file as text (non-UTF-8 bytes become U+FFFD); None when absent or unreadable."""
    content = _read_host_bytes(hostfs, absolute)
    return None if content is None else content.decode("utf-8", errors="replace")


def read_machine_id(hostfs: Path) -> str:
    """Return the trimmed machine-id (the host ID of entity ids), or "" after one warning when there is none."""
    for absolute in MACHINE_ID_FILES:
        machine_id = (_read_host_text(hostfs, absolute) or "").strip()
        if machine_id:
            return machine_id
    _warn_once(
        hostfs, "machine-id",
        "No machine-id under %s (tried %s): host.id is left out and entity ids cannot be computed. "
        "Create one with `systemd-machine-id-setup` or `dbus-uuidgen --ensure`.",
        hostfs, ", ".join(MACHINE_ID_FILES),
    )
    return ""


def read_hostname(hostfs: Path) -> str:
    """Return the host name in lower case, as go-sysinfo >= 1.13 reports it ("" when unknown).

    `/proc/sys/kernel/hostname` shows the UTS namespace of the reading process even under a host mount, so a
    containerised agent needs `--uts=host` to see the host's name.
    """
    content = _read_host_text(hostfs, "/proc/sys/kernel/hostname")
    if content is None and hostfs == OWN_ROOT:
        content = socket.gethostname()
    hostname = (content or "").strip().lower()
    if not hostname:
        _warn_once(hostfs, "hostname", "No host name in %s: host.name and host.hostname are left out",
                   procfs.host_path(hostfs, "/proc/sys/kernel/hostname"))
    return hostname


def read_kernel_release(hostfs: Path) -> str:
    """Return the kernel release (`uname -r`), "" when unknown."""
    content = _read_host_text(hostfs, "/proc/sys/kernel/osrelease")
    if content is None and hostfs == OWN_ROOT:
        content = os.uname().release
    release = (content or "").strip()
    if not release:
        _warn_once(hostfs, "osrelease", "No kernel release in %s: host.os.kernel is left out",
                   procfs.host_path(hostfs, "/proc/sys/kernel/osrelease"))
    return release


def read_boot_id(hostfs: Path) -> str:
    """Return the kernel's random boot id (changes at every boot), "" when unknown."""
    return (_read_host_text(hostfs, "/proc/sys/kernel/random/boot_id") or "").strip()


def parse_boot_time(proc_stat: str) -> int | None:
    """Return the `btime` of /proc/stat (boot time, whole seconds since the epoch), None when missing or bad."""
    for line in proc_stat.splitlines():
        if line.startswith("btime"):
            parts = line.split()
            if len(parts) == 2 and parts[0] == "btime" and parts[1].isdigit():
                return int(parts[1])
            return None
    return None


def read_boot_time(hostfs: Path) -> int | None:
    """Return the host's boot time in epoch seconds, None (after one warning) when it cannot be read."""
    boot_time = parse_boot_time(_read_host_text(hostfs, "/proc/stat") or "")
    if boot_time is None:
        _warn_once(hostfs, "btime", "No btime line in %s: the boot time is left out and reboots go unnoticed",
                   procfs.host_path(hostfs, "/proc/stat"))
    return boot_time


def parse_uptime_ns(proc_uptime: str) -> int | None:
    """Return the first number of /proc/uptime ("1099.96 2128.43") as exact nanoseconds, None when bad."""
    fields = proc_uptime.split()
    match = UPTIME_REGEX.fullmatch(fields[0]) if fields else None
    if match is None:
        return None
    whole, fraction = match.group(1), (match.group(2) or "")
    return int(whole) * NANOS_PER_SECOND + int(fraction[:9].ljust(9, "0"))


def read_uptime_ns(hostfs: Path, boot_time: int | None) -> int | None:
    """Return the uptime in nanoseconds from /proc/uptime, else from the boot time; None when neither is known."""
    uptime_ns = parse_uptime_ns(_read_host_text(hostfs, "/proc/uptime") or "")
    if uptime_ns is None and boot_time is not None:
        uptime_ns = max(0, time.time_ns() - boot_time * NANOS_PER_SECOND)
    return uptime_ns


def read_timezone(hostfs: Path) -> tuple[str, int]:
    """Return the local zone's abbreviation now (e.g. "UTC", "CET") and its UTC offset in seconds.

    On the agent's own root this is the process's local time, which honours TZ like Go's `time.Local`. Under
    another host root it is `<hostfs>/etc/localtime` (TZif); without one Go assumes UTC, and so do we.
    """
    if hostfs == OWN_ROOT:
        now = time.localtime()
        return now.tm_zone or "", now.tm_gmtoff
    content = _read_host_bytes(hostfs, "/etc/localtime")
    if content is None:
        _warn_once(hostfs, "localtime", "No %s: assuming the host runs on UTC",
                   procfs.host_path(hostfs, "/etc/localtime"))
        return "UTC", 0
    try:
        zone = ZoneInfo.from_file(io.BytesIO(content), key="localtime")
    except ValueError as error:
        _warn_once(hostfs, "localtime", "%s is not a TZif zone file (%s): assuming the host runs on UTC",
                   procfs.host_path(hostfs, "/etc/localtime"), error)
        return "UTC", 0
    now = datetime.now(zone)
    offset = now.utcoffset()
    return now.tzname() or "", int(offset.total_seconds()) if offset is not None else 0


def detect_containerized(hostfs: Path) -> bool | None:
    """Return whether the host root is a container: True, False, or None when we cannot tell."""
    if any(os.path.exists(procfs.host_path(hostfs, marker)) for marker in CONTAINER_MARKER_FILES):
        return True
    cgroup = _read_host_text(hostfs, "/proc/1/cgroup")
    if cgroup is None:
        return None
    return any(marker in line for line in cgroup.splitlines() for marker in CONTAINER_CGROUP_MARKERS)


# ---------------------------------------------------------------------------------------------------------
# Operating system, as go-sysinfo (providers/linux/os.go) derives it
# ---------------------------------------------------------------------------------------------------------

def _unquote(value: str) -> str:
    """Remove shell-style quotes from an os-release value (`"Debian GNU/Linux"`, `'x'`, `"a \\"b\\""`)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            inner = re.sub(r"\\(.)", r"\1", inner)
        return inner.strip()
    return value


def parse_os_release(content: str) -> dict[str, str]:
    """Return the KEY=value pairs of an os-release / lsb-release text; comments and odd lines are skipped."""
    fields: dict[str, str] = {}
    for line in content.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, value = stripped.split("=", 1)
        if key.strip():
            fields[key.strip()] = _unquote(value.strip())
    return fields


def _first_of(fields: Mapping[str, str], *keys: str) -> str:
    return next((fields[key] for key in keys if fields.get(key)), "")


def linux_family(platform: str) -> str:
    """Return the family (debian, redhat, suse, arch) of a platform id, by exact then prefix match, or ""."""
    platform = platform.lower()
    if not platform:
        return ""
    if platform in FAMILY_BY_PLATFORM:
        return FAMILY_BY_PLATFORM[platform]
    return next((family for prefix, family in FAMILY_BY_PLATFORM.items() if platform.startswith(prefix)), "")


def os_from_release(fields: Mapping[str, str]) -> dict[str, str]:
    """Return host.os {type, platform, name, version, codename, family} from parsed os-release fields."""
    name = _first_of(fields, "NAME", "PRETTY_NAME")
    version = _first_of(fields, "VERSION", "VERSION_ID", "DISTRIB_RELEASE")
    platform = _first_of(fields, "ID", "DISTRIB_ID") or name.split(" ", 1)[0]
    codename = _first_of(fields, "VERSION_CODENAME", "DISTRIB_CODENAME") or next(
        (value for key, value in fields.items() if "CODENAME" in key and value), ""
    )
    if not codename and version:
        match = VERSION_REGEX.search(version)
        codename = (match.group("codename") or "") if match else ""
    family = linux_family(platform) or next(
        (family for like in fields.get("ID_LIKE", "").split() if (family := linux_family(like))), ""
    )
    return {"type": "linux", "platform": platform, "name": name, "version": version, "codename": codename,
            "family": family}


def parse_distrib_release(platform: str, first_line: str) -> dict[str, str]:
    """Return host.os from the first line of an /etc/<distrib>-release file ("CentOS release 6.10 (Final)")."""
    os_info = {"type": "linux", "platform": platform, "name": "", "version": "", "codename": "",
               "family": linux_family(platform)}
    match = DISTRIB_RELEASE_REGEX.search(first_line.strip())
    if match:
        os_info["name"] = match.group("name")
        os_info["version"] = match.group("version")
        if match.group("codename"):
            os_info["codename"] = match.group("codename")
            os_info["version"] += f" ({match.group('codename')})"
    return os_info


def read_distrib_release(hostfs: Path) -> dict[str, str] | None:
    """Return host.os from the first usable /etc/<distrib>-release file (sorted, as Go's Glob), or None."""
    for path in sorted(procfs.host_path(hostfs, "/etc").glob("*-release")):
        if path.name in ("os-release", "lsb-release") or not os.path.isfile(path):
            continue
        text = _read_host_text(hostfs, f"/etc/{path.name}")
        if not text or "\n" not in text:
            continue
        return parse_distrib_release(path.name.split("-", 1)[0].lower(), text.split("\n", 1)[0])
    return None


def read_os(hostfs: Path) -> dict[str, str]:
    """Return host.os from os-release (lsb-release keys underneath), else an /etc/<distrib>-release file."""
    os_release = next(
        (text for absolute in OS_RELEASE_FILES if (text := _read_host_text(hostfs, absolute))), None
    )
    if os_release is None:
        distrib = read_distrib_release(hostfs)
        if distrib is None:
            _warn_once(hostfs, "os-release", "No os-release under %s (tried %s, /etc/*-release): host.os is "
                       "left out except its type", hostfs, ", ".join(OS_RELEASE_FILES))
            return {"type": "linux"}
        return distrib
    fields = parse_os_release(_read_host_text(hostfs, LSB_RELEASE_FILE) or "")
    fields.update(parse_os_release(os_release))
    os_info = os_from_release(fields)
    if os_info["family"] == "redhat":
        # go-sysinfo takes the codename of the redhat family from /etc/<distrib>-release (e.g. "Core").
        distrib = read_distrib_release(hostfs)
        if distrib is not None:
            os_info["codename"] = distrib["codename"]
    return os_info


# ---------------------------------------------------------------------------------------------------------
# Network (the live network namespace, not hostfs)
# ---------------------------------------------------------------------------------------------------------

def format_mac(address: str) -> str:
    """Return a MAC in ECS form (`02-2D-FD-81-E7-47`); "" when empty, all zero or not hex."""
    octets = [octet for octet in re.split(r"[:\-.]", address.strip()) if octet]
    if not octets or not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", octet) for octet in octets):
        return ""
    if all(int(octet, 16) == 0 for octet in octets):
        return ""
    return "-".join(octet.upper().zfill(2) for octet in octets)


def _interface_order() -> dict[str, int]:
    """Return interface name -> kernel index, the order Go's net.Interfaces() lists them in."""
    try:
        return {name: index for index, name in socket.if_nameindex()}
    except OSError as error:
        LOG.debug("Cannot list interface indexes (%s); using psutil's order", error)
        return {}


def _is_loopback(name: str, stats: Mapping[str, Any]) -> bool:
    interface = stats.get(name)
    flags = getattr(interface, "flags", None)
    if isinstance(flags, str):
        return "loopback" in flags.split(",")
    return name == "lo"


def _split_ip(address: str) -> tuple[str, bool]:
    """Return (address without IPv6 zone, is IPv4). An IPv4-mapped IPv6 address counts as IPv4, as in Go."""
    address = address.split("%", 1)[0]
    if address.lower().startswith("::ffff:") and "." in address:
        return address[7:], True
    return address, ":" not in address


def read_network() -> tuple[list[str], list[str]]:
    """Return (IPs, MACs) of every non-loopback interface, as Auditbeat's getNetInfo does.

    IPs: all IPv4 addresses first, then all IPv6, each in interface index order; link-local included, IPv6
    zones dropped. MACs: ECS form, empty and all-zero dropped, duplicates (bonds, VLANs) dropped.
    These come from psutil, i.e. the network namespace this process lives in, NOT from hostfs: a
    containerised agent must run with the host's network (`--network=host`) to report the host's addresses.
    """
    try:
        addresses = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
    except OSError as error:
        _warn_once(OWN_ROOT, "network", "Cannot list network interfaces (%s): host.ip and host.mac are left out",
                   error)
        return [], []
    order = _interface_order()
    ipv4: list[str] = []
    ipv6: list[str] = []
    macs: list[str] = []
    for name in sorted(addresses, key=lambda interface: order.get(interface, sys.maxsize)):
        if _is_loopback(name, stats):
            continue
        for entry in addresses[name]:
            if entry.family == psutil.AF_LINK:
                mac = format_mac(entry.address or "")
                if mac and mac not in macs:
                    macs.append(mac)
            elif entry.family in (socket.AF_INET, socket.AF_INET6) and entry.address:
                address, is_ipv4 = _split_ip(entry.address)
                (ipv4 if is_ipv4 else ipv6).append(address)
    return ipv4 + ipv6, macs


# ---------------------------------------------------------------------------------------------------------
# Snapshot and ECS mapping
# ---------------------------------------------------------------------------------------------------------

def without_empty(value: Any) -> Any:
    """Return `value` with None, "", [] and {} removed at every depth (False and 0 are kept)."""
    if isinstance(value, Mapping):
        cleaned = {key: without_empty(item) for key, item in value.items()}
        return {key: item for key, item in cleaned.items() if item not in (None, "", [], {})}
    return value


def _identity(hostfs: Path) -> dict[str, Any]:
    """Return the snapshot keys that describe the host without its clock: ids, names, OS, network."""
    ips, macs = read_network()
    return {
        "id": read_machine_id(hostfs),
        "hostname": read_hostname(hostfs),
        "architecture": os.uname().machine,
        "containerized": detect_containerized(hostfs),
        "boot_id": read_boot_id(hostfs),
        "os": {**read_os(hostfs), "kernel": read_kernel_release(hostfs)},
        "ip": ips,
        "mac": macs,
    }


def observe_host(hostfs: Path) -> dict[str, Any]:
    """Read the host now and return its snapshot: a plain JSON-serialisable dict without empty values.

    Keys: id, hostname, architecture, containerized (when known), boot_id, boottime (epoch seconds),
    uptime_ns, timezone {name, offset_sec}, os {type, platform, name, family, version, codename, kernel},
    ip, mac. Missing files never raise: their keys are left out and a warning is logged once.
    """
    hostfs = Path(hostfs)
    snapshot = _identity(hostfs)
    boot_time = read_boot_time(hostfs)
    zone_name, zone_offset = read_timezone(hostfs)
    snapshot.update(
        boottime=boot_time,
        uptime_ns=read_uptime_ns(hostfs, boot_time),
        timezone={"name": zone_name, "offset_sec": zone_offset},
    )
    return without_empty(snapshot)


def ecs_host(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ECS `host` object (without uptime) for a snapshot."""
    os_info = snapshot.get("os", {})
    return without_empty(
        {
            "id": snapshot.get("id"),
            "name": snapshot.get("hostname"),
            "hostname": snapshot.get("hostname"),
            "architecture": snapshot.get("architecture"),
            "ip": list(snapshot.get("ip", [])),
            "mac": list(snapshot.get("mac", [])),
            # Auditbeat also copies containerized and os.codename here, but ECS has no such host fields:
            # they stay under system.audit.host.*.
            "os": {key: os_info.get(key) for key in ("family", "kernel", "name", "platform", "type", "version")},
            "boot": {"id": snapshot.get("boot_id")},
        }
    )


def describe_host(hostfs: Path) -> dict[str, Any]:
    """Return the ECS `host` object the runtime puts on every event of every dataset.

    Cheap (no /proc/stat, no timezone) and never raises for a missing file: the fields it feeds are left out
    and one warning is logged.
    """
    return ecs_host(without_empty(_identity(Path(hostfs))))
