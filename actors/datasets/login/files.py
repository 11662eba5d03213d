"""The wtmp and btmp files under hostfs: finding them by pattern, opening them (plain or compressed), and
reading their records from a cursor in bounded chunks, past bytes that are not records."""

from __future__ import annotations

import bz2
import errno
import glob
import gzip
import hashlib
import lzma
import os
import re
import stat
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from actors.datasets.login.utmp import RECORD_SIZE, ZERO_RECORD, find_plausible, plausible, problem, record_time
from actors.hostfs import procfs

_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})
WTMP, BTMP = "wtmp", "btmp"
CHUNK_BYTES = RECORD_SIZE * 1024  # 384 KiB read at a time: memory stays bounded whatever the file's size

# Compressed rotations, told by their first bytes (not their names): read through the stdlib's decompressors.
_COMPRESSED: tuple[tuple[bytes, str, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),  # type: ignore[misc]
    (b"BZh", "bzip2", lambda raw: bz2.BZ2File(raw, mode="rb")),  # type: ignore[misc]
    (b"\xfd7zXZ\x00", "xz", lambda raw: lzma.LZMAFile(raw, mode="rb")),  # type: ignore[misc]
)
# Files a wtmp pattern may match that are not utmp files (no utmp record starts with these bytes).
_NOT_UTMP = (
    (b"SQLite format 3\x00", "a wtmpdb SQLite database, not a utmp file"),
    (b"\x28\xb5\x2f\xfd", "compressed with zstd, which hostaudit cannot read"),
)
MAGIC_BYTES = 16
_ROTATION = re.compile(r"[.-](\d+)")
# What a damaged or still-being-written compressed file raises while it is read.
DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


class NotUtmp(Exception):
    """The file is of a known kind that is not utmp (the message says which)."""


@dataclass(frozen=True, slots=True)
class Found:
    """A file that matched a pattern: its path on the host, where it is under hostfs, and its status."""

    path: str  # as on the host, e.g. /var/log/wtmp.1 (the event's origin)
    local: Path  # the same file under hostfs
    kind: str  # WTMP or BTMP
    device: int
    inode: int
    size: int
    mtime_ns: int

    @property
    def id(self) -> str:
        return f"{self.device}:{self.inode}"


def find_files(hostfs: Path, patterns: tuple[tuple[str, str], ...],
               on_problem: Callable[[str, str], None]) -> list[Found]:
    """The regular files matching each (kind, pattern) under `hostfs`, in the order to read them: the wtmp
    files oldest first (by modification time, then most rotated first, e.g. wtmp.2, wtmp.1, wtmp), then the
    btmp files. A file matched by both patterns is a wtmp file. `on_problem(key, message)` hears of files that
    cannot be looked at."""
    root = str(hostfs).rstrip("/")
    found: list[Found] = []
    seen: set[str] = set()
    for kind, pattern in patterns:
        if not pattern:
            continue
        matches: list[Found] = []
        for local in glob.glob(glob.escape(root) + pattern):
            if local in seen:
                continue
            seen.add(local)
            host_path = local[len(root):] if root else local
            try:
                status = os.stat(local)
            except OSError as error:
                if error.errno not in _ABSENT:
                    on_problem(f"stat {host_path}", str(procfs.Unreadable(host_path, error)))
                continue
            if not stat.S_ISREG(status.st_mode):
                if not stat.S_ISDIR(status.st_mode):
                    on_problem(f"type {host_path}", f"{host_path} is not a regular file; not read")
                continue
            matches.append(Found(host_path, Path(local), kind, status.st_dev, status.st_ino, status.st_size,
                                 status.st_mtime_ns))
        matches.sort(key=_rotation_order)
        found += matches
    return found


def _rotation_order(found: Found) -> tuple[int, int, str]:
    """Oldest first: by modification time, then by rotation number (wtmp.2 before wtmp.1 before wtmp), as
    numbers (wtmp.10 before wtmp.9)."""
    match = _ROTATION.search(found.path.rsplit("/", 1)[-1])
    return found.mtime_ns, -int(match.group(1)) if match else 0, found.path


RACY_NS = 2_000_000_000  # a directory changed this recently may change again within its mtime's granularity


class Lister:
    """What tells, cheaply and often, that any matched file changed, appeared or went: the names, inodes, sizes
    and modification times of the files. A pattern's directory (when it has no wildcard) is listed again only
    when its own modification time changed (a file was created, removed or renamed in it) or is recent."""

    def __init__(self, hostfs: Path, patterns: tuple[tuple[str, str], ...]) -> None:
        self.root = str(hostfs).rstrip("/")
        self.patterns = [pattern for _, pattern in patterns if pattern]
        self._listed: dict[str, tuple[int, list[str]]] = {}  # pattern -> (directory mtime, matching paths)

    def _matches(self, pattern: str) -> list[str]:
        directory, name = os.path.split(self.root + pattern)
        if glob.has_magic(directory):
            return glob.glob(glob.escape(self.root) + pattern)
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            self._listed.pop(pattern, None)
            return []
        listed = self._listed.get(pattern)
        if listed is not None and listed[0] == mtime and mtime < time.time_ns() - RACY_NS:
            return listed[1]
        paths = glob.glob(glob.escape(directory) + "/" + name)
        self._listed[pattern] = (mtime, paths)
        return paths

    def signature(self) -> tuple[tuple[str, int, int, int, int], ...]:
        seen: list[tuple[str, int, int, int, int]] = []
        for pattern in self.patterns:
            for path in self._matches(pattern):
                try:
                    status = os.stat(path)
                except OSError:
                    continue
                seen.append((path, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(seen)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class Source:
    """One open file: its records' bytes, decompressed when the file is compressed."""

    def __init__(self, found: Found) -> None:
        self.found = found
        self.compression: str | None = None
        self._raw: BinaryIO = open(found.local, "rb")  # noqa: SIM115 - closed by close()
        try:
            magic = self._raw.read(MAGIC_BYTES)
            for prefix, reason in _NOT_UTMP:
                if magic.startswith(prefix):
                    raise NotUtmp(reason)
            self._raw.seek(0)
            self.stream: BinaryIO = self._raw
            for prefix, name, opener in _COMPRESSED:
                if magic.startswith(prefix):
                    self.compression, self.stream = name, opener(self._raw)
                    break
        except BaseException:
            self._raw.close()
            raise

    def close(self) -> None:
        try:
            if self.stream is not self._raw:
                self.stream.close()
        finally:
            self._raw.close()

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (fewer at the end of the data); leaves the stream after them."""
        self.stream.seek(offset)
        return self.stream.read(size)

    def head(self) -> str:
        """The digest of the first record ("" while the file holds less than one)."""
        first = self.read_at(0, RECORD_SIZE)
        return digest(first) if len(first) == RECORD_SIZE else ""

    def locate(self, needle: bytes) -> int | None:
        """The offset just after the first occurrence of `needle` in the data, or None."""
        if not needle:
            return None
        self.stream.seek(0)
        carry, base = b"", 0
        while chunk := self.stream.read(CHUNK_BYTES):
            data = carry + chunk
            found = data.find(needle)
            if found >= 0:
                return base + found + len(needle)
            carry = data[len(data) - len(needle) + 1:]
            base += len(data) - len(carry)
        return None

    def first_newer(self, after: float) -> tuple[int, int]:
        """(offset, records before it) of the first record, counted from the start in steps of RECORD_SIZE,
        whose time is later than `after`; the end of the whole records when none is."""
        self.stream.seek(0)
        offset = 0
        while chunk := self.stream.read(CHUNK_BYTES):
            for start in range(0, len(chunk) - RECORD_SIZE + 1, RECORD_SIZE):
                if chunk[start:start + RECORD_SIZE] != ZERO_RECORD and record_time(chunk, start) > after:
                    return offset + start, (offset + start) // RECORD_SIZE
            offset += len(chunk) - len(chunk) % RECORD_SIZE
            if len(chunk) % RECORD_SIZE:
                break  # a short read is the end of the data
        return offset, offset // RECORD_SIZE


@dataclass
class Scan:
    """What one bounded read from a cursor found."""

    records: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, bytes) of each non-blank record
    end: int = 0  # where the next read starts: after the last whole record read or skipped
    examined: int = 0  # records read or skipped, for the caller's budget
    skipped: int = 0  # bytes skipped as not records
    first_bad: tuple[int, str] | None = None  # offset and reason of the first bytes that were not a record
    tail: int = 0  # bytes of an incomplete record at the end of the data (still being written?)
    at_end: bool = False  # reached the end of the data (not stopped by the budget)
    last: bytes = b""  # the bytes just before `end` (up to one record), to check the file is unchanged there
    error: str | None = None  # a compressed file that could not be read to its end


def scan(stream: BinaryIO, start: int, limit: int, before: bytes = b"") -> Scan:
    """Read records from `start` (the stream is positioned there; `before` are the bytes just before it, up to
    one record) until `limit` records were examined or the data ends. A record that is not one is skipped;
    when records are out of step (bytes that are not a whole record were inserted), reading resumes where two
    plausible records follow each other. Memory stays within a few chunks."""
    buffer = bytearray(before)
    pos = len(before)  # index in `buffer` of the next byte to examine
    base = start - len(before)  # file offset of buffer[0]
    result = Scan()
    eof = stalled = False
    while result.examined < limit:
        available = len(buffer) - pos
        if available < 2 * RECORD_SIZE and not eof:
            try:
                chunk = stream.read(CHUNK_BYTES)
            except DECOMPRESSION_ERRORS as error:
                chunk, result.error = b"", f"{type(error).__name__}: {error}"
            if not chunk:
                eof = True
                continue
            cut = max(0, pos - RECORD_SIZE)  # keep one record of history for `last`
            if cut:
                del buffer[:cut]
                pos -= cut
                base += cut
            buffer += chunk
            continue
        if available < RECORD_SIZE:
            break  # the end of the data, or an incomplete record at it
        reason = problem(buffer, pos)
        result.examined += 1
        if reason is None:
            if buffer[pos] or buffer[pos + 1]:  # a blank (EMPTY) record says nothing: not handed on
                result.records.append((base + pos, bytes(buffer[pos:pos + RECORD_SIZE])))
            pos += RECORD_SIZE
            continue
        step = _bad_bytes(buffer, pos, eof)
        if step == 0:  # at the end of the data, and nothing tells yet where records resume: wait for more
            result.examined -= 1
            stalled = True
            break
        if result.first_bad is None:
            result.first_bad = (base + pos, reason)
        result.skipped += step
        pos += step
    result.end = base + pos
    result.at_end = stalled or (eof and len(buffer) - pos < RECORD_SIZE)
    result.tail = len(buffer) - pos if result.at_end else 0
    result.last = bytes(buffer[max(0, pos - RECORD_SIZE):pos])
    return result


def _bad_bytes(buffer: bytearray, pos: int, eof: bool) -> int:
    """How many bytes from `pos` (where a record does not fit) to skip: one record when the next one is in
    step; else up to the next plausible record (records out of step: bytes that are not a whole record were
    written), or as far as the buffer shows none can start. 0 at the end of the data when nothing shows yet
    where records resume (wait for more rather than cut a record being written)."""
    end = len(buffer)
    after = pos + RECORD_SIZE
    if after + RECORD_SIZE <= end and (plausible(buffer, after) or buffer[after:after + RECORD_SIZE] == ZERO_RECORD):
        return RECORD_SIZE
    last_start = end - RECORD_SIZE if eof else end - 2 * RECORD_SIZE
    for candidate in find_plausible(buffer, pos + 1, last_start):
        if plausible(buffer, candidate):
            return candidate - pos
    if eof:
        return 0
    return max(1, last_start + 1 - pos)
