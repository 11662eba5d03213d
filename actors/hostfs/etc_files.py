"""Robust parsers for /etc/passwd, /etc/group and /etc/shadow under a host root, and a stat-keyed cache of them."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Mapping, Sequence, TypeVar

from actors.hostfs import procfs

LOG = logging.getLogger("hostaudit.etc_files")

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
SHADOW = "/etc/shadow"

MAX_LINE_BYTES = 1 << 20  # a group line with tens of thousands of members still fits
MAX_FILE_BYTES = 64 << 20  # beyond this the rest of the file is ignored, with a warning
MAX_ID = 2**32 - 2  # uid_t / gid_t; (uid_t)-1 means "no id" to the kernel
MAX_DAYS = 2_932_896  # days from 1970-01-01 to 9999-12-31, the last date ECS (and Python) can write
# A file changed less than this before we read it may change again within the file system's timestamp
# granularity without its (inode, size, mtime, ctime) changing: such a read is not trusted by the caches.
RACY_WINDOW_NS = 2_000_000_000

PASSWD_FIELDS = 7  # name:password:uid:gid:gecos:home:shell
GROUP_FIELDS = 4  # name:password:gid:member,member
SHADOW_FIELDS = 9  # name:password:lastchg:min:max:warn:inactive:expire:reserved

_ASCII_WHITESPACE = " \t\r\n\v\f"
_DECIMAL = re.compile(r"[0-9]{1,10}")
_SIGNED_DECIMAL = re.compile(r"-?[0-9]{1,20}")

# How many times each file was opened for reading, by path: lets tests prove the unchanged-file fast paths.
READ_COUNTS: Counter[str] = Counter()

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One /etc/passwd line (getpwent(3)); `password` is "x" when the hash lives in /etc/shadow."""

    name: str
    password: str = field(repr=False)  # may hold a crypt hash on old systems: never shown
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One /etc/group line (getgrent(3)); the group password field is dropped."""

    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    """One /etc/shadow line: the account, its password hash (a secret) and the day it last changed."""

    name: str
    password: str = field(repr=False)  # the hash: never shown, logged, persisted or sent
    last_changed_days: int | None  # days since 1970-01-01; None when empty or negative


class MalformedLine(ValueError):
    """A line that cannot be parsed. The message says why and never quotes the line."""


@dataclass(frozen=True, slots=True)
class LineProblem:
    """Why one line of a file was skipped: its 1-based number and a reason that does not quote it."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """The entries of a file that parsed, in file order, and the lines that were skipped."""

    entries: tuple[T, ...]
    problems: tuple[LineProblem, ...]


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What tells that a file changed without reading it: device, inode, size, mtime and ctime."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> "FileSignature":
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)

    def settled(self, read_at_ns: int) -> bool:
        """True when the file was last changed long enough before `read_at_ns` for the signature to be trusted."""
        return max(self.mtime_ns, self.ctime_ns) < read_at_ns - RACY_WINDOW_NS


@dataclass(frozen=True, slots=True)
class FileContent:
    """A file's bytes with the signature it had when opened and when (epoch ns) it was read."""

    data: bytes
    signature: FileSignature
    read_at_ns: int


# ---------------------------------------------------------------------------------------------------------
# Line parsers: each returns one record or raises MalformedLine
# ---------------------------------------------------------------------------------------------------------

def _split(line: str, expected: int) -> list[str]:
    fields = line.split(":")
    if len(fields) != expected:
        raise MalformedLine(f"wrong number of fields ({len(fields)}, expected {expected})")
    return fields


def _not_nis_compat(line: str) -> str:
    if line[:1] in ("+", "-"):
        raise MalformedLine("NIS compat entry (+/-), which only NSS expands")
    return line


def _name(text: str, what: str) -> str:
    if not text:
        raise MalformedLine(f"empty {what}")
    return text


def _id(text: str, what: str) -> int:
    if _DECIMAL.fullmatch(text) is None:
        raise MalformedLine(f"{what} is not a decimal number")
    value = int(text)
    if value > MAX_ID:
        raise MalformedLine(f"{what} is out of range (max {MAX_ID})")
    return value


def _optional_days(text: str, what: str) -> int | None:
    """Return a shadow day count; None when empty or negative (-1 is "not set" to shadow-utils)."""
    if text == "":
        return None
    if _SIGNED_DECIMAL.fullmatch(text) is None:
        raise MalformedLine(f"{what} is not a number")
    value = int(text)
    if value > MAX_DAYS:
        raise MalformedLine(f"{what} is out of range (max {MAX_DAYS} days)")
    return value if value >= 0 else None


def parse_passwd_line(line: str) -> PasswdEntry:
    """Parse `name:password:uid:gid:gecos:home:shell`."""
    name, password, uid, gid, gecos, home, shell = _split(_not_nis_compat(line), PASSWD_FIELDS)
    return PasswdEntry(_name(name, "user name"), password, _id(uid, "uid"), _id(gid, "gid"), gecos, home, shell)


def parse_group_line(line: str) -> GroupEntry:
    """Parse `name:password:gid:member,member,...` (white space around members is ignored, as glibc does)."""
    name, _password, gid, members = _split(_not_nis_compat(line), GROUP_FIELDS)
    names = tuple(member.strip(_ASCII_WHITESPACE) for member in members.split(","))
    return GroupEntry(_name(name, "group name"), _id(gid, "gid"), tuple(member for member in names if member))


def parse_shadow_line(line: str) -> ShadowEntry:
    """Parse `name:password:lastchg:min:max:warn:inactive:expire:reserved` (the ageing fields must be numbers)."""
    name, password, last_changed, *ageing, _reserved = _split(_not_nis_compat(line), SHADOW_FIELDS)
    for label, value in zip(("minimum age", "maximum age", "warning period", "inactivity period", "expiry date"),
                            ageing):
        _optional_days(value, label)
    return ShadowEntry(_name(name, "user name"), password, _optional_days(last_changed, "last password change"))


# ---------------------------------------------------------------------------------------------------------
# File parsers: never raise
# ---------------------------------------------------------------------------------------------------------

def _decode_line(raw: bytes) -> str | None:
    """Return a line as text without its leading blanks; None for a blank or comment line (glibc skips them)."""
    if len(raw) > MAX_LINE_BYTES:
        raise MalformedLine(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedLine("not valid UTF-8") from None
    text = text.lstrip(_ASCII_WHITESPACE)
    if not text or text.startswith("#"):
        return None
    if "\0" in text:
        raise MalformedLine("contains a NUL byte")
    return text


def parse_lines(data: bytes, parse_line: Callable[[str], T]) -> Parsed[T]:
    """Parse every line of `data` with `parse_line`; malformed lines become problems, blank and comment lines
    are skipped silently. Never raises."""
    entries: list[T] = []
    problems: list[LineProblem] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = _decode_line(raw)
            if text is not None:
                entries.append(parse_line(text))
        except MalformedLine as problem:
            problems.append(LineProblem(number, str(problem)))
    return Parsed(tuple(entries), tuple(problems))


def parse_passwd(data: bytes) -> Parsed[PasswdEntry]:
    """Parse the bytes of a passwd file."""
    return parse_lines(data, parse_passwd_line)


def parse_group(data: bytes) -> Parsed[GroupEntry]:
    """Parse the bytes of a group file."""
    return parse_lines(data, parse_group_line)


def parse_shadow(data: bytes) -> Parsed[ShadowEntry]:
    """Parse the bytes of a shadow file (problems never quote a line)."""
    return parse_lines(data, parse_shadow_line)


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------

def _not_regular(path: Path, mode: int) -> procfs.Unreadable:
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    reason = os.strerror(code) if code == errno.EISDIR else "not a regular file"
    return procfs.Unreadable(path, OSError(code, reason))


def read_file(path: Path) -> FileContent | None:
    """Return a regular file's bytes (at most MAX_FILE_BYTES + 1) and its signature; None when it is absent.

    Raises procfs.Unreadable, naming the path, when it exists but cannot be read (EACCES, a directory, a FIFO,
    EIO). The signature is taken after opening and before reading, so a write during the read shows later.
    """
    READ_COUNTS[str(path)] += 1
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        return procfs.vanished_or_raise(path, error)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(path, status.st_mode)
        read_at_ns = time.time_ns()
        chunks: list[bytes] = []
        remaining = MAX_FILE_BYTES + 1
        wanted = max(status.st_size + 1, 1 << 16)  # the whole file in one read (no join copy), if it did not grow
        while remaining > 0 and (chunk := os.read(descriptor, min(remaining, wanted))):
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as error:
        raise procfs.Unreadable(path, error) from error
    finally:
        os.close(descriptor)
    return FileContent(b"".join(chunks), FileSignature.of(status), read_at_ns)


def stat_signature(path: Path) -> FileSignature | None:
    """Return a file's signature without opening it; None when absent. Other OS errors raise Unreadable."""
    try:
        return FileSignature.of(os.stat(path))
    except OSError as error:
        return procfs.vanished_or_raise(path, error)


def parse_content(content: bytes, parser: Callable[[bytes], Parsed[T]]) -> Parsed[T]:
    """Parse a file's bytes, ignoring (as a problem) what lies beyond MAX_FILE_BYTES."""
    if len(content) <= MAX_FILE_BYTES:
        return parser(content)
    kept = content[:MAX_FILE_BYTES]
    cut = kept.rfind(b"\n") + 1
    parsed = parser(kept[:cut])
    dropped = LineProblem(kept.count(b"\n", 0, cut) + 1, f"file larger than {MAX_FILE_BYTES} bytes: the rest "
                                                          "is ignored")
    return Parsed(parsed.entries, parsed.problems + (dropped,))


_reported: dict[str, tuple[LineProblem, ...]] = {}
_reported_lock = threading.Lock()
MAX_LISTED_PROBLEMS = 10


def report_problems(path: Path, problems: Sequence[LineProblem], log: logging.Logger) -> None:
    """Log one warning naming `path` and the skipped lines (numbers and reasons, never content), unless this
    very set of problems was already reported for `path`."""
    key, found = str(path), tuple(problems)
    with _reported_lock:
        if _reported.get(key, ()) == found:
            return
        if found:
            _reported[key] = found
        else:
            _reported.pop(key, None)
    if not found:
        return
    listed = "; ".join(f"line {problem.line}: {problem.reason}" for problem in found[:MAX_LISTED_PROBLEMS])
    more = f"; and {len(found) - MAX_LISTED_PROBLEMS} more" if len(found) > MAX_LISTED_PROBLEMS else ""
    noun = "line" if len(found) == 1 else "lines"
    log.warning("%s: skipped %d malformed %s (%s%s); the other lines are used", path, len(found), noun, listed, more)


@dataclass(frozen=True, slots=True)
class LoadedFile(Generic[T]):
    """A parsed file with the signature it was read at (None when the file is absent)."""

    path: Path
    parsed: Parsed[T]
    signature: FileSignature | None
    read_at_ns: int

    @property
    def trusted(self) -> bool:
        """Whether an unchanged signature later proves the content unchanged (absent files always are)."""
        return self.signature is None or self.signature.settled(self.read_at_ns)


def load(path: Path, parser: Callable[[bytes], Parsed[T]], log: logging.Logger = LOG) -> LoadedFile[T]:
    """Read and parse a file, reporting its malformed lines once; an absent file has no entries.

    Raises procfs.Unreadable when the file exists but cannot be read.
    """
    content = read_file(path)
    if content is None:
        return LoadedFile(path, Parsed((), ()), None, time.time_ns())
    parsed = parse_content(content.data, parser)
    report_problems(path, parsed.problems, log)
    return LoadedFile(path, parsed, content.signature, content.read_at_ns)


# ---------------------------------------------------------------------------------------------------------
# Cached look-ups for every dataset (uid -> user, gid -> group)
# ---------------------------------------------------------------------------------------------------------

_cache: dict[str, LoadedFile] = {}
_cache_lock = threading.Lock()


def load_cached(path: Path, parser: Callable[[bytes], Parsed[T]], log: logging.Logger = LOG) -> LoadedFile[T]:
    """Like `load`, but return the last parse while the file's signature is unchanged (and was trusted).

    Not for /etc/shadow: its hashes are not kept in a process-wide cache.
    """
    key = f"{path}\0{getattr(parser, '__name__', id(parser))}"
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached.trusted and stat_signature(path) == cached.signature:
        return cached
    loaded = load(path, parser, log)
    with _cache_lock:
        _cache[key] = loaded
    return loaded


def _first_by(entries: Sequence[T], key: Callable[[T], int]) -> dict[int, T]:
    """Index entries by `key`; the first entry wins, as getpwuid(3) / getgrgid(3) return the first match."""
    index: dict[int, T] = {}
    for entry in entries:
        index.setdefault(key(entry), entry)
    return index


def _read_indexed(hostfs: Path, relative: str, parser: Callable[[bytes], Parsed], key: Callable[[T], int],
                  log: logging.Logger) -> dict[int, T]:
    path = procfs.host_path(Path(hostfs), relative)
    try:
        entries = load_cached(path, parser, log).parsed.entries
    except procfs.Unreadable as error:
        _warn_unreadable(path, error, log)
        return {}
    return _first_by(entries, key)


def read_passwd(hostfs: Path, log: logging.Logger = LOG) -> dict[int, PasswdEntry]:
    """Return uid -> passwd entry of `<hostfs>/etc/passwd` ({} when absent or unreadable, with one warning)."""
    return _read_indexed(hostfs, PASSWD, parse_passwd, lambda entry: entry.uid, log)


def read_group(hostfs: Path, log: logging.Logger = LOG) -> dict[int, GroupEntry]:
    """Return gid -> group entry of `<hostfs>/etc/group` ({} when absent or unreadable, with one warning)."""
    return _read_indexed(hostfs, GROUP, parse_group, lambda entry: entry.gid, log)


_uids_by_name: dict[str, tuple[LoadedFile, dict[str, int]]] = {}


def user_ids(hostfs: Path, log: logging.Logger = LOG) -> Mapping[str, int]:
    """Return user name -> uid from `<hostfs>/etc/passwd`, the first entry of each name as getpwnam(3) finds it
    ({} when absent or unreadable, with one warning); built again only when the file changed."""
    path = procfs.host_path(Path(hostfs), PASSWD)
    try:
        loaded = load_cached(path, parse_passwd, log)
    except procfs.Unreadable as error:
        _warn_unreadable(path, error, log)
        return {}
    with _cache_lock:
        cached = _uids_by_name.get(str(path))
    if cached is not None and cached[0] is loaded:
        return cached[1]
    index: dict[str, int] = {}
    for entry in loaded.parsed.entries:
        index.setdefault(entry.name, entry.uid)
    with _cache_lock:
        _uids_by_name[str(path)] = (loaded, index)
    return index


def user_names(hostfs: Path) -> Mapping[int, str]:
    """Return uid -> user name from `<hostfs>/etc/passwd` (cached while the file is unchanged)."""
    return {uid: entry.name for uid, entry in read_passwd(hostfs).items()}


def group_names(hostfs: Path) -> Mapping[int, str]:
    """Return gid -> group name from `<hostfs>/etc/group` (cached while the file is unchanged)."""
    return {gid: entry.name for gid, entry in read_group(hostfs).items()}


_unreadable_reported: set[str] = set()


def _warn_unreadable(path: Path, error: procfs.Unreadable, log: logging.Logger) -> None:
    if str(path) not in _unreadable_reported:
        _unreadable_reported.add(str(path))
        log.warning("%s; user and group names from it are left out", error)


class AccountNames:
    """User names by uid and group names by gid from `<hostfs>/etc/passwd` and `/etc/group` (not NSS), for the
    datasets that put names on their events. Looks whether a file changed at most every `recheck_seconds`;
    an unknown id has no name (the event leaves the name out rather than failing)."""

    def __init__(self, hostfs: Path, recheck_seconds: float = 1.0) -> None:
        self.hostfs = Path(hostfs)
        self.recheck_seconds = recheck_seconds
        self._checked_at = float("-inf")
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def refresh(self) -> None:
        """Look at the files now (they are parsed again only if they changed)."""
        self._checked_at = time.monotonic()
        self._users = {uid: entry.name for uid, entry in read_passwd(self.hostfs).items()}
        self._groups = {gid: entry.name for gid, entry in read_group(self.hostfs).items()}

    def _fresh(self) -> None:
        if time.monotonic() - self._checked_at >= self.recheck_seconds:
            self.refresh()

    def user(self, uid: int | str) -> str | None:
        self._fresh()
        return self._users.get(_as_id(uid))

    def group(self, gid: int | str) -> str | None:
        self._fresh()
        return self._groups.get(_as_id(gid))


def _as_id(value: int | str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1  # no account has it
