"""Reading files under the host root (`/proc`, `/etc`, ...), with OS errors mapped to a few clear outcomes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from actors.hostfs.outcome import Outcome, outcome

USER_HZ = 100  # clock ticks a second of /proc/PID/stat times (go-sysinfo hard-codes it too)
NANOS_PER_TICK = 1_000_000_000 // USER_HZ
FIRST_READ_BYTES = 16384  # one read of a /proc file: the whole of stat or status
MORE_BYTES = 65536


class Unreadable(Exception):
    """A file exists (or may exist) but cannot be read: permission denied, I/O error, not a regular file."""

    def __init__(self, path: Path | str, error: OSError) -> None:
        self.path = Path(path)
        self.errno = error.errno
        self.outcome = outcome(error)
        self.reason = error.strerror or str(error)
        denied = self.outcome is Outcome.DENIED
        hint = " (needs more privileges: run as root or grant read access)" if denied else ""
        super().__init__(f"cannot read {self.path}: {self.reason}{hint}")


def host_path(hostfs: Path, absolute: str) -> Path:
    """Return `absolute` (e.g. "/proc/stat") as seen under the host root `hostfs` (e.g. /hostfs/proc/stat)."""
    return hostfs / absolute.lstrip("/")


def vanished_or_raise(path: Path | str, error: OSError) -> None:
    """Return None when `error` says the file is not there (vanished: ENOENT, ENOTDIR, ESRCH); else raise
    Unreadable naming `path`. For `except OSError as error: return vanished_or_raise(path, error)`."""
    if outcome(error) is not Outcome.VANISHED:
        raise Unreadable(path, error) from error
    return None


def read_bytes(path: Path | str, whole: bool = True, short_is_end: bool = False) -> bytes | None:
    """Return the file's bytes (with `whole=False`, only what one read of FIRST_READ_BYTES returns: enough for
    /proc/PID/stat or status, and the cheapest read of /proc), or None when it does not exist (vanished:
    ENOENT, ENOTDIR, ESRCH). `short_is_end`: a first read shorter than asked is the whole file (true of a
    /proc/PID file, which procfs fills as far as it can: a read fewer for cmdline and cgroup).

    Raises Unreadable, naming the path, for any other OS error (EACCES, EPERM, EIO, EISDIR, ...).
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(descriptor, FIRST_READ_BYTES)
            if whole and data and not (short_is_end and len(data) < FIRST_READ_BYTES):
                chunks = [data]
                while chunk := os.read(descriptor, MORE_BYTES):
                    chunks.append(chunk)
                data = b"".join(chunks)
            return data
        finally:
            os.close(descriptor)
    except OSError as error:
        return vanished_or_raise(path, error)


def read_text(path: Path | str) -> str | None:
    """Return the file as text, or None when it does not exist; bytes that are not UTF-8 become U+FFFD.

    Raises Unreadable, naming the path, when the file cannot be read for any other reason.
    """
    content = read_bytes(path)
    return None if content is None else content.decode("utf-8", errors="replace")


def read_link(path: Path | str) -> str | None:
    """Return a symlink's target (e.g. /proc/<pid>/exe), or None when the link does not exist.

    Raises Unreadable, naming the path, when it cannot be read (EACCES on another user's process, EINVAL
    when the path is not a link, ...).
    """
    try:
        return os.readlink(path)
    except OSError as error:
        return vanished_or_raise(path, error)


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat that hostaudit uses (proc(5) numbering)."""

    pid: int  # 1
    comm: str  # 2, without its parentheses; may itself hold spaces and ")"
    state: str  # 3: R, S, D, Z (zombie: exited, not yet reaped), X (dead), ...
    ppid: int  # 4
    flags: int  # 9: the kernel's PF_* task flags (PF_KTHREAD for kernel threads)
    start_ticks: int  # 22: start time in clock ticks (USER_HZ) since boot


def parse_stat(raw: bytes) -> ProcStat | None:
    """Parse /proc/PID/stat ("pid (comm) state ppid ..."); None when it is not in that form.

    comm is what lies between the first "(" and the last ")", so a name such as "a) b (c" survives.
    """
    opening, closing = raw.find(b"("), raw.rfind(b")")
    if opening < 0 or closing < opening:
        return None
    fields = raw[closing + 2:].split()
    if len(fields) < 20:
        return None
    try:
        return ProcStat(int(raw[:opening]), raw[opening + 1:closing].decode("utf-8", "replace"),
                        fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[6]), int(fields[19]))
    except ValueError:
        return None


def status_values(raw: bytes, key: bytes) -> list[bytes]:
    """The values of one "Key:\tv1\tv2" line of /proc/PID/status (`key` as b"\nUid:"), [] when missing."""
    start = raw.find(key)
    if start < 0:
        return []
    end = raw.find(b"\n", start + 1)
    return raw[start + len(key):end if end >= 0 else len(raw)].split()


def parse_status_ids(raw: bytes) -> tuple[str, str, str, str, str, str] | None:
    """(uid, euid, suid, gid, egid, sgid) as decimal strings from /proc/PID/status; None when its Uid and Gid
    lines are missing or short."""
    uids, gids = status_values(raw, b"\nUid:"), status_values(raw, b"\nGid:")
    if len(uids) < 3 or len(gids) < 3:
        return None
    return (uids[0].decode(), uids[1].decode(), uids[2].decode(), gids[0].decode(), gids[1].decode(),
            gids[2].decode())


def parse_cmdline(raw: bytes) -> tuple[str, ...]:
    """Split /proc/PID/cmdline on NUL. Trailing NULs are dropped: the last argument's terminator, and the
    padding a process leaves when it rewrites its own title (setproctitle), which are not arguments."""
    raw = raw.rstrip(b"\0")
    return tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")) if raw else ()


def read_stat(process_dir: Path | str) -> ProcStat | None:
    """Read and parse `<process_dir>/stat` (process_dir: "<hostfs>/proc/PID"); None when the process is gone,
    or the file is unreadable or malformed."""
    try:
        raw = read_bytes(f"{process_dir}/stat", whole=False)
    except Unreadable:
        return None
    return None if raw is None else parse_stat(raw)
