"""The files the kernel opens for each execve, from fanotify (FAN_OPEN_EXEC): the executable of a process that
exited before its /proc could be read."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import struct
import time
from typing import Collection, Iterable, NamedTuple

from actors.datasets.process.exe_hash import FileId, file_id
from actors.hostfs import procfs

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_UNLIMITED_QUEUE = 0x10
FAN_MARK_ADD = 0x01
FAN_MARK_FILESYSTEM = 0x100  # Linux 4.20
FAN_OPEN_EXEC = 0x1000  # Linux 5.0
FAN_NOFD = -1
AT_FDCWD = -100
EVENT = struct.Struct("=IBBHQii")  # fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
READ_EVENTS = 256  # at most this many events per read: each holds a descriptor until taken or closed
KEPT_FILES = 4096  # at most this many descriptors held (the rest wait in the kernel's queue): 512 EXECs a pass
ORPHAN_SECONDS = 5.0  # opens whose EXEC has not come by then (a failed exec) are closed
INTERPRETERS_KEPT = 512  # programs whose ELF interpreter is remembered
PT_INTERP = 3
# Filesystems nothing is executed from; a mount with the noexec option is skipped too.
NO_EXEC_TYPES = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "fusectl", "hugetlbfs", "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs",
})
MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")  # a space, tab, newline or backslash in a mount point: \040


class ExecFile(NamedTuple):
    """The executable an exec ran, as /proc/PID/exe names it, and its identity (the hash cache's key)."""

    path: str
    identity: FileId


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


def exec_mounts(mountinfo: str) -> list[str]:
    """The mount points of /proc/self/mountinfo's text that a program may be executed from, once each."""
    points: dict[str, None] = {}
    for line in mountinfo.splitlines():
        mount, separator, filesystem = line.partition(" - ")  # id, parent, dev, root, point, options ... - type ...
        fields, fs_type = mount.split(), filesystem.split()[:1]
        if not separator or len(fields) < 6 or not fs_type or fs_type[0] in NO_EXEC_TYPES:
            continue
        if "noexec" not in fields[5].split(","):
            points[MOUNTINFO_ESCAPE.sub(lambda escape: chr(int(escape[1], 8)), fields[4])] = None
    return list(points)


def elf_interpreter(descriptor: int) -> bytes | None:
    """The PT_INTERP path of the ELF file open at `descriptor` (its dynamic loader), else None."""
    try:
        header = os.pread(descriptor, 64, 0)
        if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
            return None
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # 64-bit
            if len(header) < 64:
                return None
            offset, = struct.unpack_from(order + "Q", header, 32)
            entry_size, count = struct.unpack_from(order + "HH", header, 54)
            program = struct.Struct(order + "IIQ8xQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
        else:
            offset, = struct.unpack_from(order + "I", header, 28)
            entry_size, count = struct.unpack_from(order + "HH", header, 42)
            program = struct.Struct(order + "II8xI")  # p_type, p_offset, p_vaddr, p_paddr, p_filesz
        if entry_size < program.size or not 0 < count <= 256:
            return None
        table = os.pread(descriptor, entry_size * count, offset)
        for start in range(0, len(table) - entry_size + 1, entry_size):
            entry = program.unpack_from(table, start)
            if entry[0] != PT_INTERP:
                continue
            where, size = (entry[2], entry[4]) if header[4] == 2 else (entry[1], entry[2])
            return os.pread(descriptor, min(size, 4096), where).rstrip(b"\0") or None
    except (OSError, struct.error):
        return None
    return None


class ExecFiles:
    """A fanotify group told of every file opened for exec on the host's filesystems.

    The kernel queues these opens (the program, then its ELF interpreter; for a script, the script, then its
    interpreter) before the exec completes, so they are in the queue when the connector's EXEC is read. `take`
    names the executable of the given pids from them; each event holds an open descriptor of its file, so the
    file is known even after the process and its /proc are gone. Descriptors are closed when their EXEC is taken,
    or after ORPHAN_SECONDS for an exec that failed; at most KEPT_FILES are held, the rest wait in the queue.
    """

    def __init__(self, mountinfo_path: str = "/proc/self/mountinfo") -> None:
        self._mountinfo_path = mountinfo_path
        self._libc = _libc()
        self._group = -1
        self._marked: set[str] = set()
        # pid -> (when first read, descriptors of the files it opened for exec, in order); oldest pid first
        self._opens: dict[int, tuple[float, list[int]]] = {}
        self._held = 0  # descriptors in _opens
        self._interpreters: dict[FileId, tuple[int, int] | None] = {}  # a program -> its ELF interpreter's identity
        self._kept = KEPT_FILES
        self.mounts = -1  # /proc/self/mountinfo, for POLLPRI when the mounts change (then call `mark_mounts`)

    def open(self) -> "ExecFiles":
        """Create the group and mark every exec-able filesystem; OSError when the kernel or our rights refuse."""
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
        group = self._libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if group < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self._group = group
        self._kept = _allow_descriptors(KEPT_FILES)
        try:
            self.mounts = os.open(self._mountinfo_path, os.O_RDONLY | os.O_CLOEXEC)
            if not self.mark_mounts():
                raise OSError(errno.EINVAL, "no filesystem could be marked for FAN_OPEN_EXEC")
        except OSError:
            self.close()
            raise
        return self

    def mark_mounts(self) -> int:
        """Mark the filesystems of the mounts not marked yet (at open, and when the mounts change); how many
        are marked in all."""
        mountinfo = procfs.read_text(self._mountinfo_path) or ""
        for point in exec_mounts(mountinfo):
            if point in self._marked:
                continue
            if self._libc.fanotify_mark(self._group, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC, AT_FDCWD,
                                        os.fsencode(point)) == 0:
                self._marked.add(point)
                continue
            code = ctypes.get_errno()  # the first mark refused: the kernel lacks FAN_OPEN_EXEC, or we lack the right
            if not self._marked and code in (errno.EINVAL, errno.EPERM, errno.ENOSYS):
                raise OSError(code, f"fanotify_mark FAN_OPEN_EXEC on {point}: {os.strerror(code)}")
        return len(self._marked)

    def take(self, execs: Iterable[int], needed: Collection[int]) -> dict[int, ExecFile]:
        """The executable each pid of `needed` last exec'd, for those the queue names one. `execs` are the pids
        whose EXEC was read (`needed` among them): their descriptors are closed."""
        self._read()
        found: dict[int, ExecFile] = {}
        for pid in execs:
            if (entry := self._opens.pop(pid, None)) is None:
                continue
            descriptors = entry[1]
            if pid in needed and (file := self._executable(descriptors)) is not None:
                found[pid] = file
            self._held -= len(descriptors)
            _close(descriptors)
        self._close_orphans(time.monotonic() - ORPHAN_SECONDS)
        return found

    def close(self) -> None:
        self._close_orphans(float("inf"))
        for name in ("_group", "mounts"):
            if (descriptor := getattr(self, name)) >= 0:
                os.close(descriptor)
                setattr(self, name, -1)

    def _read(self) -> None:
        """Move what the group's queue holds into `_opens` (without waiting), up to KEPT_FILES descriptors."""
        now = time.monotonic()
        while (room := min(READ_EVENTS, self._kept - self._held)) > 0:
            try:
                data = os.read(self._group, room * EVENT.size)
            except BlockingIOError:
                return
            except OSError as error:  # EMFILE/ENFILE: the kernel dropped the event it could not give a descriptor
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    self._close_orphans(float("inf"))
                    return
                raise
            for offset in range(0, len(data) - EVENT.size + 1, EVENT.size):
                length, _version, _reserved, _meta, _mask, descriptor, pid = EVENT.unpack_from(data, offset)
                if length != EVENT.size:  # not the layout we asked for: stop reading this group
                    raise OSError(errno.EPROTO, f"fanotify event of {length} bytes, expected {EVENT.size}")
                if descriptor == FAN_NOFD:
                    continue
                self._opens.setdefault(pid, (now, []))[1].append(descriptor)
                self._held += 1
            if len(data) < room * EVENT.size:
                return

    def _close_orphans(self, before: float) -> None:
        """Close the descriptors first read before `before` (monotonic seconds)."""
        while self._opens:
            pid = next(iter(self._opens))
            read_at, descriptors = self._opens[pid]
            if read_at >= before:
                return
            del self._opens[pid]
            self._held -= len(descriptors)
            _close(descriptors)

    def _executable(self, descriptors: list[int]) -> ExecFile | None:
        """What /proc/PID/exe names after the exec whose opens end `descriptors`: the last file opened, unless it is
        the ELF interpreter of the one before it."""
        try:
            last = file_id(os.fstat(descriptors[-1]))
            chosen = descriptors[-1]
            if len(descriptors) > 1:
                before = descriptors[-2]
                program = file_id(os.fstat(before))
                if program not in self._interpreters:
                    if len(self._interpreters) >= INTERPRETERS_KEPT:
                        self._interpreters.clear()
                    self._interpreters[program] = self._interpreter_identity(before)
                if self._interpreters[program] == last[:2]:
                    chosen, last = before, program
            return ExecFile(os.readlink(f"/proc/self/fd/{chosen}"), last)
        except OSError:
            return None

    @staticmethod
    def _interpreter_identity(descriptor: int) -> tuple[int, int] | None:
        interpreter = elf_interpreter(descriptor)
        if interpreter is None:
            return None
        try:
            status = os.stat(interpreter)
        except OSError:
            return None
        return status.st_dev, status.st_ino


def _allow_descriptors(wanted: int) -> int:
    """Raise the soft limit of open files so that `wanted` more fit (up to the hard limit); how many fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + 256  # the process's own
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(READ_EVENTS, min(wanted, soft - 256))


def _close(descriptors: list[int]) -> None:
    for descriptor in descriptors:
        try:
            os.close(descriptor)
        except OSError:
            pass
