"""Builds wtmp and btmp files for tests and benchmarks: records packed with `struct` the way glibc's writers lay
out `struct utmp` on x86-64 and aarch64 (written out here independently of the dataset's own parser)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

# ut_type, padding, ut_pid, ut_line[32], ut_id[4], ut_user[32], ut_host[256], e_termination, e_exit, ut_session,
# tv_sec, tv_usec, ut_addr_v6[4] (int32 words holding the address bytes in network order), reserved[20].
UTMP = struct.Struct("<hhi32s4s32s256shhiii4I20s")
assert UTMP.size == 384

RUN_LVL, BOOT_TIME, INIT_PROCESS, LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS = 1, 2, 5, 6, 7, 8


def address_words(ip: str | None) -> tuple[int, int, int, int]:
    """ut_addr_v6 as the four int32 words C code fills with memcpy of an in_addr / in6_addr."""
    packed = ipaddress.ip_address(ip).packed if ip else b""
    return struct.unpack("<4I", packed.ljust(16, b"\0"))


def record(kind: int, pid: int = 0, line: str = "", ut_id: str = "", user: str = "", host: str = "",
           when: float = 0.0, ip: str | None = None) -> bytes:
    seconds = int(when)
    micros = int(round((when - seconds) * 1e6))
    return UTMP.pack(kind, 0, pid, line.encode(), ut_id.encode(), user.encode(), host.encode(), 0, 0, 0, seconds,
                     micros, *address_words(ip), bytes(20))


def login(user: str, line: str, pid: int, when: float, host: str = "", ip: str | None = None) -> bytes:
    return record(USER_PROCESS, pid, line, line[-4:], user, host, when, ip)


def logout(line: str, pid: int, when: float) -> bytes:
    return record(DEAD_PROCESS, pid, line, line[-4:], "", "", when)


def failed(user: str, line: str, pid: int, when: float, host: str = "", ip: str | None = None) -> bytes:
    """A btmp record, as sshd writes one (LOGIN_PROCESS)."""
    return record(LOGIN_PROCESS, pid, line, "", user, host, when, ip)


def boot(when: float, kernel: str = "6.1.0-test") -> bytes:
    return record(BOOT_TIME, 0, "~", "~~", "reboot", kernel, when)


def shutdown(when: float, kernel: str = "6.1.0-test") -> bytes:
    """systemd's shutdown record (utmp_put_shutdown)."""
    return record(RUN_LVL, 0, "~~", "~~", "shutdown", kernel, when)


def runlevel(when: float, level: str, previous: str = "N") -> bytes:
    """sysvinit's / systemd's runlevel record: ut_pid = level + 256 * previous level."""
    return record(RUN_LVL, ord(level) + 256 * ord(previous), "~", "~~", "runlevel", "6.1.0-test", when)


def getty(line: str, pid: int, when: float) -> bytes:
    """The records a getty leaves (INIT_PROCESS, then LOGIN_PROCESS): no event of their own."""
    return record(INIT_PROCESS, pid, line, line[-4:], "", "", when) + \
        record(LOGIN_PROCESS, pid, line, line[-4:], "LOGIN", "", when)


def append(path: Path, *records: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(b"".join(records))


def synthetic_history(count: int, start: float = 1_700_000_000.0) -> bytes:
    """`count` records of a busy host: boots, ssh sessions from IPv4 and IPv6 addresses, getty noise."""
    out: list[bytes] = []
    when = start
    while len(out) < count:
        index = len(out)
        when += 7.25
        if index % 500 == 0:
            out.append(boot(when))
            continue
        tty = f"pts/{index % 40}"
        pid = 1000 + index % 30000
        ip = f"10.{index % 250}.{(index // 250) % 250}.{index % 200 + 1}" if index % 3 else f"2001:db8::{index >> 16:x}:{index & 0xffff:x}"
        out.append(login(f"user{index % 50}", tty, pid, when, host=f"client{index % 97}.example.net", ip=ip))
        out.append(logout(tty, pid, when + 3))
    return b"".join(out[:count])
