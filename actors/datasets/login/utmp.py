"""The Linux `struct utmp` record of wtmp and btmp files (384 bytes on x86-64 and aarch64): layout, types,
parsing with `struct`, plausibility checks, and the source address it holds."""

from __future__ import annotations

import re
import socket
import struct
from typing import NamedTuple

RECORD_SIZE = 384
# short ut_type, 2 bytes padding, pid_t ut_pid, char ut_line[32], ut_id[4], ut_user[32], ut_host[256],
# short e_termination, short e_exit, int32 ut_session, int32 tv_sec, int32 tv_usec, int32 ut_addr_v6[4],
# char reserved[20]. Little-endian: both architectures with this layout are.
LAYOUT = struct.Struct("<h2xi32s4s32s256shhiii16s20x")
assert LAYOUT.size == RECORD_SIZE
_TIME = struct.Struct("<ii")
_TIME_OFFSET = 340
_CHECKED = struct.Struct("<h338xii")  # ut_type and ut_tv, the fields `problem` looks at, in one unpack

# ut_type values (utmp(5)).
EMPTY, RUN_LVL, BOOT_TIME, NEW_TIME, OLD_TIME, INIT_PROCESS, LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS, \
    ACCOUNTING = range(10)
TYPE_NAMES = ("EMPTY", "RUN_LVL", "BOOT_TIME", "NEW_TIME", "OLD_TIME", "INIT_PROCESS", "LOGIN_PROCESS",
              "USER_PROCESS", "DEAD_PROCESS", "ACCOUNTING")

ZERO_RECORD = bytes(RECORD_SIZE)
_ZERO_4, _ZERO_12 = bytes(4), bytes(12)
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d
_MAYBE_IP = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# A record start that `plausible` may accept: ut_type 1..8 as a little-endian short.
_CANDIDATE = re.compile(rb"[\x01-\x08]\x00", re.DOTALL)
# A string field as glibc leaves it: printable text (UTF-8 allowed), then NUL padding.
_CLEAN_FIELD = re.compile(rb"[^\x00-\x1f\x7f]*\x00*", re.DOTALL)


class Utmp(NamedTuple):
    """The fields of one record that events use (strings are cut at their first NUL)."""

    type: int
    pid: int
    line: str
    user: str
    host: str
    seconds: int
    microseconds: int
    address: bytes  # ut_addr_v6, 16 bytes as stored

    @property
    def time(self) -> float:
        return self.seconds + self.microseconds / 1e6


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "replace")


def parse(buffer: bytes | memoryview, offset: int = 0) -> Utmp:
    """The record that starts at `offset` of `buffer` (which must hold RECORD_SIZE bytes from there)."""
    (kind, pid, line, _id, user, host, _termination, _exit, _session, seconds, microseconds,
     address) = LAYOUT.unpack_from(buffer, offset)
    return Utmp(kind, pid, _text(line), _text(user), _text(host), seconds, microseconds, address)


def record_time(buffer: bytes | memoryview, offset: int = 0) -> float:
    seconds, microseconds = _TIME.unpack_from(buffer, offset + _TIME_OFFSET)
    return seconds + microseconds / 1e6


def problem(buffer: bytes | bytearray | memoryview, offset: int = 0) -> str | None:
    """Why the RECORD_SIZE bytes at `offset` are not a utmp record, or None when they may be one.

    As lenient as a fixed-size reader (glibc, `last`) can afford while still noticing records that are out of
    step: a known type; an EMPTY record all zero (as a cleared entry is); any other with a positive time
    whose microseconds are in range."""
    kind, seconds, microseconds = _CHECKED.unpack_from(buffer, offset)
    if kind == EMPTY:
        if buffer[offset:offset + RECORD_SIZE] != ZERO_RECORD:
            return "an EMPTY record that is not blank"
        return None
    if not 0 < kind <= ACCOUNTING:
        return f"unknown record type {kind}"
    if seconds <= 0 or not 0 <= microseconds < 1_000_000:
        return f"impossible time ({seconds} s, {microseconds} us) in a {TYPE_NAMES[kind]} record"
    return None


def plausible(buffer: bytes | memoryview, offset: int) -> bool:
    """Strict check used to find where records start again after bytes that are not records: a type that
    carries a time (1..8), a positive time, and clean line, user and host fields (printable, then NULs)."""
    (kind, _pid, line, _id, user, host, _termination, _exit, _session, seconds, microseconds,
     _address) = LAYOUT.unpack_from(buffer, offset)
    return (RUN_LVL <= kind <= DEAD_PROCESS and seconds > 0 and 0 <= microseconds < 1_000_000
            and _CLEAN_FIELD.fullmatch(line) is not None and _CLEAN_FIELD.fullmatch(user) is not None
            and _CLEAN_FIELD.fullmatch(host) is not None)


def find_plausible(buffer: bytes | memoryview, start: int, last: int) -> list[int]:
    """Offsets in [start, last] where a record could begin (its type bytes fit), in order; cheap to find
    (a C regex scan), each still to be checked with `plausible`."""
    if last < start:
        return []
    return [match.start() for match in _CANDIDATE.finditer(buffer, start, last + 2)
            if match.start() <= last]


def source_ip(address: bytes, host: str) -> str | None:
    """The remote address of a record: IPv4 when the last three words of ut_addr_v6 are zero (its first word
    holds the address in network order), else IPv6 (an IPv4-mapped one as IPv4). None for a local login
    (all zero; never 0.0.0.0). When the record holds no address but ut_host is an address, that one."""
    if address[4:] == _ZERO_12:
        if address[:4] != _ZERO_4:
            return socket.inet_ntop(socket.AF_INET, address[:4])
    elif address[:12] == _MAPPED_PREFIX:
        return None if address[12:] == _ZERO_4 else socket.inet_ntop(socket.AF_INET, address[12:])
    else:
        return socket.inet_ntop(socket.AF_INET6, address)
    if not host or not _MAYBE_IP.fullmatch(host):
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except OSError:
            continue
        return None if not any(packed) else socket.inet_ntop(family, packed)
    return None
