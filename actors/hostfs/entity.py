"""Auditbeat's entity_id algorithms (process, user, socket, package), byte for byte, so ids match Auditbeat's, and
the process start time (go-sysinfo's) they hash."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct

from actors.event import iso_millis
from actors.hostfs.procfs import USER_HZ


def _entity_id(*parts: bytes) -> str:
    digest = hashlib.sha256(b"".join(parts)).digest()
    return base64.b64encode(digest[:12]).decode()  # 12 bytes -> 16 characters, no padding


def _int64le(value: int) -> bytes:
    return struct.pack("<q", value)


def start_offset_ns(start_ticks: int) -> int:
    """A process's start after boot in ns, as go-sysinfo computes it: `Duration(int64(float64(ticks) / 100 *
    1e9))` (the same IEEE double arithmetic as Go, truncated); its start time is `time.Unix(btime, 0)` plus this."""
    return int(start_ticks / USER_HZ * 1e9)


def process_start_iso(boot_time: int, start_ticks: int) -> str:
    """`process.start` as go-sysinfo computes it (btime + Duration(float(ticks)/100*1e9)), in ISO UTC millis."""
    nanos = start_offset_ns(start_ticks)
    return iso_millis((boot_time * 1000 + nanos // 1_000_000) / 1000)


def start_time_nanosecond(start_ticks: int) -> int:
    """The sub-second part of go-sysinfo's start time, as Go's `StartTime.Nanosecond()` returns it (btime is
    whole seconds, so only the ticks decide the fraction)."""
    return start_offset_ns(start_ticks) % 1_000_000_000


def process_entity_id(host_id: str, pid: int, start_ticks: int) -> str:
    """`process.entity_id`: sha256(hostID || int64le(pid) || int64le(start.Nanosecond()))[:12], base64."""
    return _entity_id(host_id.encode(), _int64le(pid), _int64le(start_time_nanosecond(start_ticks)))


def user_entity_id(host_id: str, name: str, uid: str | int) -> str:
    """`user.entity_id`: sha256(hostID || name || uid as decimal)[:12], base64 (the code writes name, then uid)."""
    return _entity_id(host_id.encode(), name.encode(), str(uid).encode())


def package_entity_id(host_id: str, name: str, version: str) -> str:
    """`system.audit.package.entity_id`: sha256(hostID || name || version)[:12], base64."""
    return _entity_id(host_id.encode(), name.encode(), version.encode())


_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def _ip16(address: str) -> bytes:
    """The 16-byte form Go's net.IP uses: IPv4 as ::ffff:a.b.c.d, IPv6 as is (inet_pton: a state report hashes
    two addresses per socket, and ipaddress's parser took most of its time)."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address)
    return _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, address)


def socket_entity_id(host_id: str, inode: int, local_ip: str, remote_ip: str, local_port: int,
                     remote_port: int) -> str:
    """Auditbeat v1 `socket.entity_id`: hostID || int64le(inode) || lip16 || rip16 || int64le(lport) || int64le(rport)."""
    return _entity_id(host_id.encode(), _int64le(inode), _ip16(local_ip), _ip16(remote_ip), _int64le(local_port),
                      _int64le(remote_port))
