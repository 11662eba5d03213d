"""The durable on-disk queue (spool) of events not yet acknowledged by the output: one writer, one reader per directory.

Layout of a dataset's spool directory:

- `<first sequence, 20 digits>.seg`: segment files of records, named after the sequence of their first record. A
  record is a 20-byte header (magic, body length, CRC-32C of sequence + body, sequence; little-endian) followed by
  its body. Sequences strictly increase within and across segments. Two record versions:
  - `HAR2` (written now): the body is the routing section then the payload. The routing section is its length
    (u32) and entries: name length (u16), name, value length (u32; 0xFFFFFFFF: no value), value (UTF-8). It holds
    the values of the fields the output routes by, recorded by the collector (see actors.outputs.routing).
  - `HAR1` (written by earlier versions, still read): the body is the payload alone; no routing values.
  A writer never appends to a segment it did not create, so a segment holds one version only.
- `ack`: the acknowledgement cursor (JSON: segment, offset just after the last acknowledged record, its sequence).
- `writer.lock`, `reader.lock`: flock'ed by the one writer and the one reader; they hold the holder's pid.

Faults are contained: a damaged stretch of a segment is copied aside (to the reader's `corrupt_dir`) and the reader
resynchronises on the next valid record; the writer never modifies a segment it did not create in this run; stray
segment files and bogus cursors cannot make sequences jump; a full disk makes appends fail (and later succeed) and
acknowledgements stay in memory until the cursor can be written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from struct import Struct
from types import MappingProxyType, TracebackType
from typing import Sequence

from crc32c import crc32c

from actors.outputs.routing import RoutingValues as Routing  # field -> its text, None when the event lacks it

log = logging.getLogger("hostaudit.spool")

MAGIC = b"HAR2"  # the record version written: a routing section before the payload
MAGIC_V1 = b"HAR1"  # the previous version, read only: the payload alone
HEADER = Struct("<4sIIQ")  # magic, body length, CRC-32C of (sequence as u64 little-endian + body), sequence
HEADER_SIZE = HEADER.size
RECORD_OVERHEAD = HEADER_SIZE + 4  # bytes a record adds to its payload when it carries no routing values
MAX_PAYLOAD_BYTES = 2**32 - 1  # of a record's body (routing section and payload)
MAX_SEQUENCE = 2**64 - 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_MAX_AGE = 30.0
DEFAULT_LOCK_TIMEOUT = 5.0
SEGMENT_SUFFIX = ".seg"
ACK_FILE = "ack"
CURSOR_BYTES = 128  # the cursor file's fixed size: JSON padded with spaces, then a newline (rewritten in place)
WRITER_LOCK = "writer.lock"
READER_LOCK = "reader.lock"
READ_WINDOW = 1024 * 1024  # bytes read from a segment per pread() when scanning

_CHECKED_FROM = 12  # the CRC covers the record from its sequence field to the end of its body
CORRUPT_DIR = "corrupt"  # under path.data: damaged spool bytes and stray files, kept aside for inspection
_SEQUENCE = Struct("<Q")
_U16 = Struct("<H")
_U32 = Struct("<I")
_NO_VALUE = 0xFFFFFFFF  # a routing entry whose field the event lacks
_MAGIC_SEARCH = re.compile(b"HAR[12]")  # the magic of either version
_ROUTING_CACHE_ENTRIES = 256  # distinct routing sections decoded and kept (a dataset has one or a few)
_UNSEEN = object()
_SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")
_RECOVERY_BATCH = 4096  # records held in memory at once while walking a whole segment
_COPY_CHUNK = 1024 * 1024
_LOCK_POLL = 0.05
_fdatasync = getattr(os, "fdatasync", os.fsync)

# Why a scan of a segment stopped.
_END = "end"  # at the end of the data: every byte was a good record
_PARTIAL = "partial"  # the next record is incomplete (being written, or torn)
_CORRUPT = "corrupt"  # the next record is complete but its magic, CRC or sequence is wrong
_LIMIT = "limit"  # the caller's record or byte limit was reached

# What the first record of a segment file says about the file.
_VALID = "valid"  # a good first record whose sequence is the one in the file's name
_MISMATCH = "mismatch"  # a good first record with another sequence: a stray file, not part of this spool
_EMPTY = "empty"  # no bytes: a segment just created (its first record follows at once), or a stray
_DAMAGED = "damaged"  # the first record is incomplete or bad: read on with resynchronisation

# Where the reader's open segment stands.
_OPEN = "open"  # the newest: the writer may still append to it
_CLOSED = "closed"  # a newer valid segment exists: this one is final
_GONE = "gone"  # the file was removed or replaced since it was opened
_DISPLACED = "displaced"  # nothing was read from it and an older-named segment appeared (a writer restarted)


class SpoolLockedError(OSError):
    """Another writer (or reader) holds the lock of the spool directory."""

    def __init__(self, message: str, directory: Path | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.directory = directory
        self.pid = pid


@dataclass(frozen=True, order=True, slots=True)
class SpoolPosition:
    """The end of one spooled record: segment file name, offset just after the record, and its sequence.

    Positions order as they occur in the spool. `segment == ""` is the start of an empty spool.
    """

    segment: str
    offset: int
    sequence: int


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record read back from the spool; acknowledge `position` once the output has it.

    `routing` holds the routing values recorded with the event (shared between records: read only), None for a
    record of the previous version (or one whose routing section cannot be read): route it from its payload.
    """

    sequence: int
    payload: bytes
    position: SpoolPosition
    routing: Routing | None = None


_START = SpoolPosition("", 0, 0)


def segment_name(first_sequence: int) -> str:
    """Return the file name of the segment whose first record has `first_sequence`."""
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


def _first_sequence(segment: str) -> int:
    return int(segment[: -len(SEGMENT_SUFFIX)])


def _is_segment(name: str) -> bool:
    return _SEGMENT_NAME.fullmatch(name) is not None and _first_sequence(name) <= MAX_SEQUENCE


def encode_routing(values: Routing) -> bytes:
    """The routing section of a record (its length first) holding `values`; TypeError/ValueError if they are
    not str names with str or None values that fit the format."""
    entries = []
    for name, value in values.items():
        if not isinstance(name, str) or not (value is None or isinstance(value, str)):
            raise TypeError(f"routing values must map str to str or None, got {name!r}: {value!r}")
        encoded_name = name.encode("utf-8", "replace")
        if len(encoded_name) > 0xFFFF:
            raise ValueError(f"routing field name of {len(encoded_name)} bytes is too long")
        entries.append(_U16.pack(len(encoded_name)))
        entries.append(encoded_name)
        if value is None:
            entries.append(_U32.pack(_NO_VALUE))
        else:
            encoded = value.encode("utf-8", "replace")  # a lone surrogate becomes '?', as in the encoded event
            if len(encoded) >= _NO_VALUE:
                raise ValueError(f"routing value of {len(encoded)} bytes is too long")
            entries.append(_U32.pack(len(encoded)))
            entries.append(encoded)
    section = b"".join(entries)
    return _U32.pack(len(section)) + section


_EMPTY_ROUTING = encode_routing({})


def decode_routing(section: bytes) -> dict[str, str | None]:
    """The routing values of a routing section's entries (without its length); ValueError if malformed."""
    values: dict[str, str | None] = {}
    position, size = 0, len(section)
    try:
        while position < size:
            (length,) = _U16.unpack_from(section, position)
            position += _U16.size
            if position + length > size:
                raise ValueError("a field name runs past the section")
            name = section[position : position + length].decode("utf-8")
            position += length
            (length,) = _U32.unpack_from(section, position)
            position += _U32.size
            if length == _NO_VALUE:
                values[name] = None
                continue
            if position + length > size:
                raise ValueError(f"the value of {name} runs past the section")
            values[name] = section[position : position + length].decode("utf-8")
            position += length
    except struct.error as error:  # an entry cut short (a bad name or value is a ValueError already)
        raise ValueError(f"an entry is cut short ({error})") from None
    return values


def encode_record(sequence: int, payload: bytes, routing: Routing | None = None) -> bytes:
    """Return one record exactly as the spool stores it (the current version, HAR2)."""
    body = (_EMPTY_ROUTING if not routing else encode_routing(routing)) + payload
    return HEADER.pack(MAGIC, len(body), crc32c(body, crc32c(_SEQUENCE.pack(sequence))), sequence) + body


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    inode: int
    size: int


def _listing(directory: Path) -> list[_Entry]:
    """Return the segment files of `directory` (name, inode, size), oldest first; [] if the directory is missing."""
    found: list[_Entry] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not _is_segment(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted by the reader since the listing
                    continue
                found.append(_Entry(entry.name, info.st_ino, info.st_size))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(key=lambda entry: entry.name)
    return found


def _segment_sizes(directory: Path) -> list[tuple[str, int]]:
    """Return (name, size) of every segment in `directory`, oldest first; [] if the directory is missing."""
    return [(entry.name, entry.size) for entry in _listing(directory)]


def _segments(directory: Path) -> list[str]:
    """Return the segment names in `directory`, oldest first; [] if the directory is missing."""
    try:
        names = [name for name in os.listdir(directory) if _is_segment(name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _bytes_after(sizes: list[tuple[str, int]], position: SpoolPosition) -> int:
    pending = 0
    for segment, size in sizes:
        if segment > position.segment:
            pending += size
        elif segment == position.segment:
            pending += max(size - position.offset, 0)
    return pending


def spool_size(root: Path) -> int:
    """Return the bytes held in segment files under `root` (the spool root holding one directory per dataset).

    Cheap enough to call before every append: it lists directories and stats files, it reads nothing.
    """
    total = 0
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        total += sum(size for _, size in _segment_sizes(Path(entry.path)))
                    elif _is_segment(entry.name):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total


def unacknowledged_bytes(root: Path) -> int:
    """Return the bytes of segment data not yet acknowledged under `root` (one directory per dataset).

    For each dataset directory: the segment bytes after its acknowledgement cursor (all of them without a readable
    cursor). This is what bounds the spool (`queue.disk.max_size`): acknowledged bytes are reclaimed by the reader.
    Cheap: it lists directories, stats files and reads the small cursor files; files vanishing meanwhile are fine.
    """
    total = 0
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                directory = Path(entry.path)
                cursor = _load_cursor(directory, warn=False) or _START
                total += _bytes_after(_segment_sizes(directory), cursor)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total


# --- decoding -----------------------------------------------------------------------------------------------


def _well_formed(magic: bytes, length: int, data: bytes | memoryview, body_at: int) -> bool:
    """Whether a record whose CRC matched is well formed: a HAR2 body starts with the length of its routing
    section, which must fit in the body (only a writer bug could break that; such a record counts as bad)."""
    return magic == MAGIC_V1 or (length >= _U32.size and _U32.unpack_from(data, body_at)[0] <= length - _U32.size)


@dataclass(frozen=True, slots=True)
class _Scan:
    # (sequence, payload, offset after the record, routing section entries or None for a HAR1 record)
    records: list[tuple[int, bytes, int, bytes | None]]
    offset: int  # just after the last good record: where the next scan starts
    sequence: int  # sequence of the last good record, or the floor passed in
    stop: str


def _scan(
    fd: int,
    offset: int,
    data_end: int,
    floor: int,
    max_records: int,
    max_payload_bytes: int,
    take_one: bool,
) -> _Scan:
    """Decode the good records of a segment from `offset` up to `data_end`, in order, until the first bad one.

    A record is good when it is complete, starts with a magic (either version), its CRC matches, it is well formed,
    and its sequence is greater than `floor` (then greater than the previous record's). Stops before `max_records`
    records or before exceeding `max_payload_bytes` of record bodies, except that with `take_one` the first record
    is taken whatever its size.
    """
    records: list[tuple[int, bytes, int, bytes | None]] = []
    taken = 0
    need = HEADER_SIZE
    while True:
        if len(records) >= max_records:
            return _Scan(records, offset, floor, _LIMIT)
        available = data_end - offset
        if available <= 0:
            return _Scan(records, offset, floor, _END)
        if available < need:
            return _Scan(records, offset, floor, _PARTIAL)
        budget = max(max_payload_bytes - taken, 0) + HEADER_SIZE * (max_records - len(records))
        window = os.pread(fd, min(available, max(need, min(READ_WINDOW, budget))), offset)
        if len(window) < need:  # the file shrank since data_end was measured: its writer cut a torn write
            return _Scan(records, offset, floor, _PARTIAL)
        view = memoryview(window)
        size = len(window)
        position = 0
        while len(records) < max_records:
            if size - position < HEADER_SIZE:
                need = HEADER_SIZE
                break
            magic, length, crc, sequence = HEADER.unpack_from(window, position)
            if magic != MAGIC and magic != MAGIC_V1:
                return _Scan(records, offset + position, floor, _CORRUPT)
            end = position + HEADER_SIZE + length
            if end > size:
                need = HEADER_SIZE + length
                break
            if taken + length > max_payload_bytes and (records or not take_one):
                return _Scan(records, offset + position, floor, _LIMIT)
            body = position + HEADER_SIZE
            if (sequence <= floor or crc32c(view[position + _CHECKED_FROM : end]) != crc
                    or not _well_formed(magic, length, window, body)):
                return _Scan(records, offset + position, floor, _CORRUPT)
            if magic == MAGIC:
                entries = body + _U32.size + _U32.unpack_from(window, body)[0]
                records.append((sequence, window[entries:end], offset + end, window[body + _U32.size : entries]))
            else:
                records.append((sequence, window[body:end], offset + end, None))
            taken += length
            floor = sequence
            position = end
        offset += position


def _resync(fd: int, start: int, data_end: int, floor: int) -> tuple[int, int]:
    """Find the first good record (magic, complete, sequence above `floor`, CRC) starting at or after `start`.

    Returns (its offset or -1, the offset from which a later search must look again once more data exists: the
    first candidate found incomplete, else just before the end). Searches for either version's magic, so a stretch
    of garbage costs about one read of it.
    """
    retry = -1
    base = start
    overlap = len(MAGIC) - 1
    while base < data_end:
        window = os.pread(fd, min(READ_WINDOW, data_end - base), base)
        if not window:
            break
        size = len(window)
        found = _MAGIC_SEARCH.search(window)
        while found is not None:
            index = found.start()
            candidate = base + index
            if candidate + HEADER_SIZE > data_end:
                return -1, candidate if retry < 0 else retry
            if index + HEADER_SIZE <= size:
                magic, length, crc, sequence = HEADER.unpack_from(window, index)
            else:
                magic, length, crc, sequence = HEADER.unpack(os.pread(fd, HEADER_SIZE, candidate))
            if sequence > floor:
                end = candidate + HEADER_SIZE + length
                if end > data_end:
                    if retry < 0:
                        retry = candidate  # complete only later (being written), or a bogus length: look again
                else:
                    if index + HEADER_SIZE + length <= size:
                        checked: bytes | memoryview = memoryview(window)[index + _CHECKED_FROM : index + HEADER_SIZE + length]
                    else:
                        checked = os.pread(fd, HEADER_SIZE - _CHECKED_FROM + length, candidate + _CHECKED_FROM)
                    if (len(checked) == HEADER_SIZE - _CHECKED_FROM + length and crc32c(checked) == crc
                            and _well_formed(magic, length, checked, HEADER_SIZE - _CHECKED_FROM)):
                        return candidate, candidate
            found = _MAGIC_SEARCH.search(window, index + 1)
        if base + size >= data_end:
            break
        base += size - overlap  # a magic split across two windows is found in the second
    return -1, retry if retry >= 0 else max(start, data_end - overlap)


def _walk(
    fd: int, data_end: int, floor: int, last_offset: int = -1, last_sequence: int = MAX_SEQUENCE
) -> tuple[int, int, bool]:
    """Walk the good records of a whole segment from offset 0 (resynchronising past bad stretches), keeping none.

    Returns (offset just after the last good record, its sequence or `floor`, more) where the walk stops before
    the first record that ends after `last_offset` (when given) or has a sequence above `last_sequence`; `more`
    is True when it stopped there rather than at the end of the good data.
    """
    offset = 0
    last_end, sequence = 0, floor
    while True:
        scan = _scan(fd, offset, data_end, sequence, _RECOVERY_BATCH, MAX_SEQUENCE, take_one=True)
        for record_sequence, _, end, _ in scan.records:
            if (last_offset >= 0 and end > last_offset) or record_sequence > last_sequence:
                return last_end, sequence, True
            last_end, sequence = end, record_sequence
        offset = scan.offset
        if scan.stop == _LIMIT:
            continue
        if scan.stop == _END:
            return last_end, sequence, False
        found, _ = _resync(fd, offset + 1, data_end, sequence)
        if found < 0:
            return last_end, sequence, False
        offset = found


def _head_kind(fd: int, segment: str, size: int) -> str:
    """Classify a segment file by its first record (see _VALID and the others)."""
    if size == 0:
        return _EMPTY
    header = os.pread(fd, HEADER_SIZE, 0)
    if len(header) < HEADER_SIZE:
        return _DAMAGED
    magic, length, crc, sequence = HEADER.unpack(header)
    if (magic != MAGIC and magic != MAGIC_V1) or HEADER_SIZE + length > size:
        return _DAMAGED
    checked = os.pread(fd, HEADER_SIZE - _CHECKED_FROM + length, _CHECKED_FROM)
    if (len(checked) != HEADER_SIZE - _CHECKED_FROM + length or crc32c(checked) != crc
            or not _well_formed(magic, length, checked, HEADER_SIZE - _CHECKED_FROM)):
        return _DAMAGED
    return _VALID if sequence == _first_sequence(segment) else _MISMATCH


def _classify_path(path: Path, segment: str) -> tuple[str, int, int]:
    """Return (kind, inode, size) of a segment file; raises FileNotFoundError if it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        return _head_kind(fd, segment, info.st_size), info.st_ino, info.st_size
    finally:
        os.close(fd)


# --- files ------------------------------------------------------------------------------------------------


def _cursor_check(segment: str, offset: int, sequence: int) -> int:
    """The checksum stored in a cursor: a torn rewrite of the file (a crash mid-write) does not match it."""
    return crc32c(f"{segment}:{offset}:{sequence}".encode("ascii"))


def encode_cursor(position: SpoolPosition) -> bytes:
    """The cursor file's content: CURSOR_BYTES of JSON with its checksum, padded with spaces, then a newline."""
    check = _cursor_check(position.segment, position.offset, position.sequence)
    text = json.dumps({"segment": position.segment, "offset": position.offset, "sequence": position.sequence,
                       "check": check}, separators=(",", ":"))
    return text.encode("ascii").ljust(CURSOR_BYTES - 1) + b"\n"


def _load_cursor(directory: Path, warn: bool) -> SpoolPosition | None:
    """Return the acknowledgement cursor stored in `directory`, or None if there is none or it is unreadable.

    The cursor is rewritten in place (encode_cursor): its checksum must match, else it is torn (a crash mid-write;
    a read racing the rewrite is read again). A cursor without newline is of the older form (written whole to a
    temporary file and renamed): it has no checksum."""
    path = directory / ACK_FILE
    for attempt in range(3):
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as error:
            if warn:
                log.warning("cannot read spool cursor %s (%s); re-sending from the oldest segment", path, error)
            return None
        try:
            stored = json.loads(text)
            segment, offset, sequence = stored["segment"], stored["offset"], stored["sequence"]
            torn = text.endswith("\n") and stored.get("check") != _cursor_check(segment, offset, sequence)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeEncodeError):
            segment = offset = sequence = None
            torn = False
        if not torn:
            break
        if attempt == 2:
            if warn:
                log.warning("spool cursor %s does not match its checksum (torn by a crash mid-write); re-sending "
                            "from the oldest segment", path)
            return None
    if (
        isinstance(segment, str)
        and _is_segment(segment)
        and type(offset) is int
        and type(sequence) is int
        and 0 <= offset
        and 0 <= sequence <= MAX_SEQUENCE
    ):
        return SpoolPosition(segment, offset, sequence)
    if warn:
        log.warning("spool cursor %s is not valid JSON of the expected shape; re-sending from the oldest segment", path)
    return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_directory(directory: Path, fsync: bool) -> None:
    """Create `directory` and any missing parents with mode 0700; tighten an existing one to 0700."""
    missing: list[Path] = []
    cursor = directory
    while not cursor.is_dir():
        missing.append(cursor)
        cursor = cursor.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not path.is_dir():
                raise NotADirectoryError(f"spool directory {path} exists and is not a directory") from None
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        if fsync:
            _fsync_directory(path.parent)
    if os.stat(directory).st_mode & 0o777 != 0o700:
        os.chmod(directory, 0o700)


def _unique(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{number}")
        number += 1
    return candidate


def _move_aside(directory: Path, segment: str, corrupt_dir: Path | None) -> Path | None:
    """Move a stray segment file out of the spool: into `corrupt_dir`, else renamed in place (no longer a segment).

    Returns where it went, or None if it vanished meanwhile."""
    source = directory / segment
    targets: list[Path] = []
    if corrupt_dir is not None:
        targets.append(corrupt_dir / f"{directory.name}-{segment}-0.bad")
    targets.append(directory / f"{segment}.stray")
    last_error: OSError | None = None
    for target in targets:
        try:
            if target.parent != directory:
                _make_private_directory(target.parent, fsync=False)
            target = _unique(target)
            os.rename(source, target)
            return target
        except FileNotFoundError:
            if not os.path.lexists(source):
                return None
            last_error = None
        except OSError as error:  # e.g. EXDEV: corrupt_dir on another file system
            last_error = error
    if last_error is not None:
        raise last_error
    return None


class _Lock:
    """An exclusive flock on a lock file holding the holder's pid; released by release(), garbage collection, or
    the holder's death."""

    def __init__(self, directory: Path, name: str, role: str, timeout: float) -> None:
        path = directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o777 != 0o600:
                os.fchmod(fd, 0o600)  # the umask filters os.open's mode
            deadline = time.monotonic() + max(timeout, 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        pid = _lock_holder(fd)
                        raise SpoolLockedError(
                            f"spool directory {directory} is in use by another {role} "
                            f"(pid {pid if pid is not None else 'unknown'}, lock {path})",
                            directory,
                            pid,
                        ) from None
                    time.sleep(min(_LOCK_POLL, remaining))
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, b"%d\n" % os.getpid(), 0)
            except OSError:  # the pid only helps a message; a full disk must not stop the spool
                pass
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def _lock_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


# --- writer -----------------------------------------------------------------------------------------------


class SpoolWriter:
    """Appends records to one spool directory. Exactly one writer per directory (a flock on `writer.lock`).

    Records go to the newest segment file; a new segment (named after its first sequence) is started when the
    current one would exceed `segment_bytes`, when it is older than `segment_max_age` seconds (so the reader can
    delete what was acknowledged), at the first append after opening (existing segments are never modified),
    and after any failed write or fsync. The writer never deletes segments holding records: the reader does.
    Stray segment files newer than the spool's data are moved aside (into `corrupt_dir` when given).
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        segment_max_age: float = DEFAULT_SEGMENT_MAX_AGE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        corrupt_dir: Path | None = None,
    ) -> None:
        if segment_bytes < HEADER_SIZE:
            raise ValueError(f"segment_bytes must be at least {HEADER_SIZE}, got {segment_bytes}")
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._segment_max_age = segment_max_age
        self._lock_timeout = lock_timeout
        self._corrupt_dir = Path(corrupt_dir) if corrupt_dir is not None else None
        self._fd: int | None = None
        self._segment = ""
        self._created = 0.0  # time.monotonic() when the current segment was created
        self._size = 0  # bytes of complete records in the current segment
        self._dirty = False  # written since the last fsync
        self._last_sequence = 0
        _make_private_directory(self._directory, fsync)
        self._lock: _Lock | None = _Lock(self._directory, WRITER_LOCK, "writer", lock_timeout)
        try:
            self._last_sequence = self._recover()
        except BaseException:
            self._lock.release()
            raise

    @property
    def last_sequence(self) -> int:
        """The sequence of the last record stored complete; the next append must start above it. 0 for a new spool."""
        return self._last_sequence

    @property
    def directory(self) -> Path:
        return self._directory

    def _recover(self) -> int:
        """Learn the last good sequence from the newest segment holding records; move newer stray files aside."""
        for entry in reversed(_listing(self._directory)):
            path = self._directory / entry.name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                kind = _head_kind(fd, entry.name, size)
                if kind in (_VALID, _DAMAGED):
                    end, sequence, _ = _walk(fd, size, _first_sequence(entry.name) - 1)
                    if end > 0:
                        if end < size:
                            log.info(
                                "spool segment %s: %d bytes after offset %d are not good records (a torn write or "
                                "damage); new records go to a new segment, the reader sets those bytes aside",
                                path,
                                size - end,
                                end,
                            )
                        return sequence
            finally:
                os.close(fd)
            self._set_aside(entry.name, kind, size)
        return 0

    def _set_aside(self, segment: str, kind: str, size: int) -> None:
        """Remove a segment file holding no record of this spool: delete it if empty, else move it aside."""
        path = self._directory / segment
        if size == 0:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            log.warning("spool segment %s is empty (a segment never written, or a stray file): removed", path)
            return
        target = _move_aside(self._directory, segment, self._corrupt_dir)
        if target is not None:
            reason = "its first record has another sequence" if kind == _MISMATCH else "it holds no good record"
            log.warning("spool segment %s is not part of the spool (%s): moved to %s", path, reason, target)

    def append(self, records: Sequence[tuple[int, bytes] | tuple[int, bytes, Routing]]) -> int:
        """Store `records` (sequence, payload) or (sequence, payload, routing values) durably and return the bytes
        written.

        Sequences must be strictly increasing and above `last_sequence`, else ValueError and nothing is written
        (likewise TypeError/ValueError for a payload or routing values the format cannot hold). With fsync=True the
        records are on disk when this returns (one fsync per segment touched; a batch crossing into a new segment
        also syncs the segment and directory entry). On OSError (disk full, I/O error) the records up to
        `last_sequence` were written complete (after a failed fsync their durability is unknown, but they may be
        read and delivered: never reuse their sequences) and none after it; the next append starts a new segment.
        """
        previous = self._last_sequence
        encoded: list[tuple[int, bytes, bytes]] = []  # (sequence, routing section, payload)
        for record in records:
            sequence, payload = record[0], record[1]
            if type(sequence) is not int or not previous < sequence <= MAX_SEQUENCE:
                raise ValueError(
                    f"spool {self._directory}: sequence {sequence!r} must be an integer above {previous} "
                    f"and at most {MAX_SEQUENCE}"
                )
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"spool {self._directory}: payload must be bytes, got {type(payload).__name__}")
            routing = record[2] if len(record) > 2 else None  # type: ignore[misc]
            section = encode_routing(routing) if routing else _EMPTY_ROUTING
            if len(section) + len(payload) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"spool {self._directory}: payload of {len(payload)} bytes exceeds "
                                 f"{MAX_PAYLOAD_BYTES - len(section)}")
            encoded.append((sequence, section, payload))
            previous = sequence
        if not encoded:
            return 0
        if self._lock is None:  # closed, used again
            self._lock = _Lock(self._directory, WRITER_LOCK, "writer", self._lock_timeout)
        try:
            return self._append(encoded)
        except OSError:
            self._abandon()
            raise

    def _append(self, records: Sequence[tuple[int, bytes, bytes]]) -> int:
        if self._fd is not None and time.monotonic() - self._created >= self._segment_max_age:
            self._finish()
        written = 0
        chunk: list[bytes] = []
        ends: list[tuple[int, int]] = []  # (offset in chunk after a record, its sequence)
        chunk_size = 0
        pack = HEADER.pack
        pack_sequence = _SEQUENCE.pack
        for sequence, section, payload in records:
            length = len(section) + len(payload)
            record_size = HEADER_SIZE + length
            if self._fd is None or (
                self._size + chunk_size > 0 and self._size + chunk_size + record_size > self._segment_bytes
            ):
                if chunk:
                    written += self._write(chunk, ends)
                    chunk, ends, chunk_size = [], [], 0
                self._roll(sequence)
            chunk.append(pack(MAGIC, length, crc32c(payload, crc32c(section, crc32c(pack_sequence(sequence)))),
                              sequence))
            chunk.append(section)
            chunk.append(payload)
            chunk_size += record_size
            ends.append((chunk_size, sequence))
        if chunk:
            written += self._write(chunk, ends)
        self._sync()
        return written

    def _write(self, chunk: list[bytes], ends: list[tuple[int, int]]) -> int:
        """Append encoded records to the current segment with one write() (more only if the kernel writes short)."""
        assert self._fd is not None
        data = b"".join(chunk)
        done = 0
        try:
            done = os.write(self._fd, data)
            while done < len(data):
                done += os.write(self._fd, memoryview(data)[done:])
        except OSError:
            self._keep_complete_records(done, ends)
            raise
        self._size += len(data)
        self._dirty = True
        self._last_sequence = ends[-1][1]
        return len(data)

    def _keep_complete_records(self, done: int, ends: list[tuple[int, int]]) -> None:
        """After a short write, count the records written complete and try to cut the partial one off."""
        assert self._fd is not None
        kept, last = 0, 0
        for end, sequence in ends:
            if end > done:
                break
            kept, last = end, sequence
        if done > kept:
            try:
                os.ftruncate(self._fd, self._size + kept)
            except OSError:  # left for the reader to set aside once the next segment exists
                pass
        self._size += kept
        if last:
            self._dirty = True
            self._last_sequence = last

    def _sync(self) -> None:
        if self._fsync and self._dirty and self._fd is not None:
            _fdatasync(self._fd)
        self._dirty = False

    def _finish(self) -> None:
        """Sync (when fsync=True) and close the current segment: the next append starts a new one."""
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None

    def _abandon(self) -> None:
        """After a failed write or fsync: close the current segment without syncing; drop it if it is empty."""
        fd, self._fd = self._fd, None
        self._dirty = False
        if fd is None:
            return
        try:
            if self._size == 0 and os.fstat(fd).st_size == 0:
                os.unlink(self._directory / self._segment)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _roll(self, first_sequence: int) -> None:
        """Finish the current segment (synced) and start a new one named after `first_sequence`."""
        self._finish()
        segment = segment_name(first_sequence)
        path = self._directory / segment
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # a stray, or a segment left empty or torn by a failed append: not ours to append to
            try:
                kind, _, size = _classify_path(path, segment)
            except FileNotFoundError:
                kind, size = _EMPTY, -1
            if size >= 0:
                self._set_aside(segment, kind, size)
            fd = os.open(path, flags, 0o600)
        self._fd, self._segment, self._size, self._dirty = fd, segment, 0, False
        self._created = time.monotonic()
        os.fchmod(fd, 0o600)  # the umask filters os.open's mode
        if self._fsync:
            _fsync_directory(self._directory)  # the new name must survive a crash before records land in it

    def close(self) -> None:
        """Sync (when fsync=True) and close the current segment, and release the lock. Safe to call twice."""
        try:
            if self._fd is not None:
                try:
                    self._sync()
                finally:
                    os.close(self._fd)
                    self._fd = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# --- reader -----------------------------------------------------------------------------------------------


class SpoolReader:
    """Reads records back from one spool directory, in order, and deletes what the output acknowledged.

    Exactly one reader per directory (a flock on `reader.lock`), in one thread; it runs concurrently with the
    writer (another process). Delivery is at-least-once: records after the acknowledged position are read again
    after a restart or `rewind()`. Bytes that are not good records are skipped: the reader resynchronises on the
    next good record, copies the skipped bytes into `corrupt_dir` (when given) and logs one warning per stretch.
    """

    def __init__(
        self, directory: Path, corrupt_dir: Path | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        self._directory = Path(directory)
        self._corrupt_dir = Path(corrupt_dir) if corrupt_dir is not None else None
        self._lock_timeout = lock_timeout
        self._fd: int | None = None
        self._fd_segment = ""
        self._fd_inode = 0
        self._offset = 0  # read offset in the open segment
        self._segment_closed = False  # a newer valid segment exists, so the open one is final
        self._passed = ""  # the newest segment read to its end (or skipped)
        self._floor = 0  # records read next must have a greater sequence
        self._hint: tuple[str, int, int] | None = None  # (segment, bad offset, where to look again for a good record)
        self._kinds: dict[str, tuple[int, str]] = {}  # segment -> (inode, kind) for the kinds that never change
        self._reported: set[tuple[str, int]] = set()  # bad stretches (segment, offset) already set aside
        self._warned: set[tuple[str, int]] = set()  # stray files (segment, inode) already warned about
        self._cursor_error: str | None = None
        self._cursor_fd: int | None = None  # the cursor file, open once written (rewritten in place)
        self._routings: dict[bytes, Routing | None] = {}  # routing section entries -> values (records share them)
        _make_private_directory(self._directory, fsync=False)
        self._lock: _Lock | None = _Lock(self._directory, READER_LOCK, "reader", lock_timeout)
        cursor = _load_cursor(self._directory, warn=True)
        if cursor is not None:
            cursor = self._validate(cursor)
        self._acked = self._position = cursor or _START

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def acknowledged(self) -> SpoolPosition:
        """The position up to which the output has acknowledged records (where a restart resumes)."""
        return self._acked

    @property
    def cursor_error(self) -> str | None:
        """Why the last attempt to store the acknowledgement cursor failed (disk full, I/O error); None once a
        write succeeds. The acknowledged position is kept in memory meanwhile and written at the next acknowledge."""
        return self._cursor_error

    # --- segments

    def _kind(self, entry: _Entry) -> str:
        """Classify a segment file by its first record; valid and mismatched files are remembered (by inode)."""
        known = self._kinds.get(entry.name)
        if known is not None and known[0] == entry.inode:
            return known[1]
        if entry.size == 0:
            return _EMPTY
        try:
            kind, inode, _ = _classify_path(self._directory / entry.name, entry.name)
        except FileNotFoundError:
            return _EMPTY
        if kind in (_VALID, _MISMATCH):
            self._kinds[entry.name] = (inode, kind)
        return kind

    def _holds_records(self, entry: _Entry) -> bool:
        """True if the segment holds a good record of its own (as the writer judges when it opens)."""
        kind = self._kind(entry)
        if kind != _DAMAGED:
            return kind == _VALID
        try:
            fd = os.open(self._directory / entry.name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            return _walk(fd, os.fstat(fd).st_size, _first_sequence(entry.name) - 1)[0] > 0
        finally:
            os.close(fd)

    def _stray(self, entry: _Entry) -> None:
        """Ignore a file whose first record belongs to another sequence (one warning); move it into corrupt_dir."""
        key = (entry.name, entry.inode)
        if key in self._warned:
            return
        self._warned.add(key)
        path = self._directory / entry.name
        target: Path | None = None
        if self._corrupt_dir is not None:
            try:
                _make_private_directory(self._corrupt_dir, fsync=False)
                target = _unique(self._corrupt_dir / f"{self._directory.name}-{entry.name}-0.bad")
                os.rename(path, target)
                self._kinds.pop(entry.name, None)
            except OSError as error:
                log.warning("spool segment %s is a stray file (its first record has another sequence): ignored; "
                            "could not move it to %s (%s)", path, self._corrupt_dir, error)
                return
        log.warning("spool segment %s is a stray file (its first record has another sequence): ignored%s",
                    path, f", moved to {target}" if target is not None else "")

    def _open(self, entry: _Entry) -> bool:
        self._close_segment()
        try:
            fd = os.open(self._directory / entry.name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        self._fd, self._fd_segment, self._fd_inode = fd, entry.name, os.fstat(fd).st_ino
        self._segment_closed = False
        self._hint = None
        return True

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_segment = ""

    def _open_next(self) -> bool:
        """Open the segment to read next: the read position's own, or the first one after what was read."""
        entries = _listing(self._directory)
        position = self._position
        if position.segment and position.segment > self._passed:
            for entry in entries:
                if entry.name == position.segment:
                    if self._open(entry):
                        self._offset = position.offset
                        self._floor = position.sequence if position.offset else _first_sequence(entry.name) - 1
                        return True
                    break
        start = max(position.segment, self._passed)
        later = [entry for entry in entries if entry.name > start]
        for index, entry in enumerate(later):
            kind = self._kind(entry)
            if kind == _MISMATCH:
                self._stray(entry)
                continue
            if kind == _EMPTY:
                if not any(self._kind(newer) == _VALID for newer in later[index + 1 :]):
                    return False  # the newest: a segment just created, its first record comes at once
                self._warn_empty(entry)
                continue
            if self._open(entry):
                self._offset = 0
                self._floor = max(position.sequence if position.segment else -1, _first_sequence(entry.name) - 1)
                return True
        return False

    def _warn_empty(self, entry: _Entry) -> None:
        key = (entry.name, entry.inode)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("spool segment %s is empty and a newer segment exists (a stray file, or a segment never "
                        "written): ignored", self._directory / entry.name)

    def _state(self) -> str:
        """Where the open segment stands (see _OPEN and the others)."""
        segment = self._fd_segment
        nothing_read = self._position.segment != segment and self._offset == 0
        start = max(self._position.segment, self._passed)
        present = False
        state = _OPEN
        for entry in _listing(self._directory):
            if entry.name == segment:
                present = entry.inode == self._fd_inode
            elif entry.name > segment:
                kind = self._kind(entry)
                if kind == _VALID:
                    state = _CLOSED
                    break
                if kind == _MISMATCH:
                    self._stray(entry)
            elif nothing_read and entry.name > start and self._kind(entry) in (_VALID, _DAMAGED):
                return _DISPLACED
        if not present:
            return _GONE
        return state

    def _set_aside_bytes(self, segment: str, offset: int, length: int, reason: str) -> None:
        """Copy a stretch of bad bytes into corrupt_dir and log one warning (once per stretch)."""
        key = (segment, offset)
        if key in self._reported or length <= 0:
            return
        self._reported.add(key)
        assert self._fd is not None
        path = self._directory / segment
        where = "not copied (no corrupt directory configured)"
        if self._corrupt_dir is not None:
            target = self._corrupt_dir / f"{self._directory.name}-{segment}-{offset}.bad"
            try:
                _make_private_directory(self._corrupt_dir, fsync=False)
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.fchmod(out, 0o600)
                    copied = 0
                    while copied < length:
                        data = os.pread(self._fd, min(_COPY_CHUNK, length - copied), offset + copied)
                        if not data:
                            break
                        os.write(out, data)
                        copied += len(data)
                finally:
                    os.close(out)
                where = f"copied to {target}"
            except OSError as error:
                where = f"could not copy them to {target}: {error}"
        log.warning(
            "spool segment %s: %d bytes at offset %d are not good records (%s): skipped, %s",
            path,
            length,
            offset,
            reason,
            where,
        )

    def _skip_bad(self, bad: int, size: int) -> bool:
        """At a bad or incomplete record at `bad`: skip to the next good record if one follows. False if none does."""
        assert self._fd is not None
        start = bad + 1
        if self._hint is not None and self._hint[:2] == (self._fd_segment, bad):
            start = max(start, min(self._hint[2], size))
        found, retry = _resync(self._fd, start, size, self._floor)
        if found < 0:
            self._hint = (self._fd_segment, bad, retry)
            return False
        self._hint = None
        self._set_aside_bytes(self._fd_segment, bad, found - bad, "damaged or torn data before a good record")
        self._offset = found
        return True

    # --- reading

    def read(self, max_records: int, max_bytes: int) -> list[SpooledRecord]:
        """Return up to `max_records` records (at most `max_bytes` of payload, but at least one record when any
        is available) following the last one read, in sequence order, across segments.

        Stops before a record the writer has not finished. Bad bytes are skipped up to the next good record (one
        warning, a copy in corrupt_dir); a bad or torn tail of a closed segment likewise. Returns [] when nothing
        new is complete.
        """
        if self._lock is None:
            self._relock()
        records: list[SpooledRecord] = []
        taken = 0
        while len(records) < max_records:
            if self._fd is None and not self._open_next():
                break
            assert self._fd is not None
            segment = self._fd_segment
            size = os.fstat(self._fd).st_size
            if self._offset > size:  # the writer cut a torn write the reader had skipped into
                self._offset, self._floor, _ = _walk(self._fd, size, _first_sequence(segment) - 1, self._offset, self._floor)
            scan = _scan(
                self._fd, self._offset, size, self._floor, max_records - len(records), max_bytes - taken, not records
            )
            if scan.records:
                routings = self._routings
                for sequence, payload, end, entries in scan.records:
                    routing = None
                    if entries is not None:
                        routing = routings.get(entries, _UNSEEN)
                        if routing is _UNSEEN:
                            routing = self._routing(entries, segment, sequence)
                        taken += _U32.size + len(entries)
                    records.append(SpooledRecord(sequence, payload, SpoolPosition(segment, end, sequence), routing))
                    taken += len(payload)
                self._position = records[-1].position
                self._floor = scan.sequence
                self._offset = scan.offset
            if scan.stop == _LIMIT:
                break
            if scan.stop != _END and self._skip_bad(scan.offset, size):
                continue
            if not self._segment_closed:
                state = self._state()
                if state == _OPEN:
                    break  # the newest segment: the writer may still be appending
                if state == _CLOSED:
                    self._segment_closed = True
                    continue  # the segment is final now: scan its tail once more before moving on
                if state == _GONE and self._position.segment == segment:
                    self._passed = segment  # deleted once acknowledged
                self._close_segment()  # gone (moved aside: nothing of it was read), or displaced
                continue
            if size > self._offset:
                self._set_aside_bytes(segment, self._offset, size - self._offset, "the tail of a closed segment")
            elif size == 0:
                self._warn_empty(_Entry(segment, self._fd_inode, 0))
            self._passed = segment
            self._close_segment()
        return records

    def _routing(self, entries: bytes, segment: str, sequence: int) -> Routing | None:
        """The routing values of a record's routing section entries, decoded once per distinct section; None (one
        warning) when they cannot be read: the output then routes the event from its payload."""
        values: Routing | None
        try:
            values = MappingProxyType(decode_routing(entries))
        except ValueError as error:
            log.warning("spool segment %s: record %d has an unreadable routing section (%s); the output routes it "
                        "from its payload", self._directory / segment, sequence, error)
            values = None
        if len(self._routings) >= _ROUTING_CACHE_ENTRIES:
            self._routings.clear()
        self._routings[entries] = values
        return values

    # --- acknowledging

    def acknowledge(self, position: SpoolPosition) -> None:
        """Record that the output has every record up to `position`, and delete the closed segments it covers.

        The cursor file is rewritten in place with a checksum but not synced: a crash may forget the last
        acknowledgement, which only re-sends records (a torn cursor is detected, and re-sends the spool). A
        position at or before the current cursor is ignored. If the cursor cannot be written (disk full, I/O
        error) this does not raise: the position is kept in memory, `cursor_error` says why, and the write is
        tried again at the next acknowledge.
        """
        if self._lock is None:
            self._relock()
        if position <= self._acked:
            if self._cursor_error is not None:
                self._store_cursor(self._acked)
            return
        self._acked = position
        self._store_cursor(position)
        if self._position < position:  # acknowledged beyond what this reader read: do not read it again
            self._seek(position)
        self._delete_acknowledged_segments()

    def _store_cursor(self, position: SpoolPosition) -> None:
        try:
            self._write_cursor(position)
        except OSError as error:
            if self._cursor_error is None:
                log.warning("cannot write spool cursor %s (%s); acknowledgements kept in memory until it can",
                            self._directory / ACK_FILE, error)
            self._cursor_error = f"cannot write spool cursor {self._directory / ACK_FILE}: {error}"
            return
        if self._cursor_error is not None:
            log.info("spool cursor %s written again", self._directory / ACK_FILE)
        self._cursor_error = None

    def _write_cursor(self, position: SpoolPosition) -> None:
        """Rewrite the cursor file in place (one pwrite of CURSOR_BYTES, checksummed: see _load_cursor); a
        temporary file renamed over it cost a file creation and a rename, which flushes, per batch."""
        data = encode_cursor(position)
        try:
            if self._cursor_fd is None:
                self._cursor_fd = os.open(self._directory / ACK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if os.fstat(self._cursor_fd).st_size > CURSOR_BYTES:  # never: the older form is shorter
                    os.ftruncate(self._cursor_fd, CURSOR_BYTES)
            if os.pwrite(self._cursor_fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            self._close_cursor(drop_if_empty=True)  # a cursor file just created, not written, is not left behind
            raise

    def _close_cursor(self, drop_if_empty: bool = False) -> None:
        if self._cursor_fd is None:
            return
        try:
            if drop_if_empty and os.fstat(self._cursor_fd).st_size == 0:
                os.unlink(self._directory / ACK_FILE)
        except OSError:
            pass
        finally:
            os.close(self._cursor_fd)
            self._cursor_fd = None

    def _delete_acknowledged_segments(self) -> None:
        """Delete every closed segment that lies wholly at or before the acknowledged position."""
        entries = _listing(self._directory)
        acked = self._acked
        for index, entry in enumerate(entries):
            if entry.name > acked.segment:
                break
            if entry.name == acked.segment and (
                entry.size > acked.offset or not any(self._kind(newer) == _VALID for newer in entries[index + 1 :])
            ):
                break  # not wholly acknowledged, or the newest: the writer may be appending to it
            try:
                os.unlink(self._directory / entry.name)
            except FileNotFoundError:
                pass
            self._kinds.pop(entry.name, None)

    # --- positions

    def _validate(self, cursor: SpoolPosition) -> SpoolPosition | None:
        """Check the stored cursor against the segments; None (refused, with a warning) if it points beyond them."""
        real = [entry for entry in _listing(self._directory) if self._holds_records(entry)]
        newest = real[-1].name if real else ""

        def refuse(reason: str) -> None:
            log.warning(
                "spool cursor %s (segment %s, offset %d, sequence %d) %s: refused, re-sending from the oldest segment",
                self._directory / ACK_FILE, cursor.segment, cursor.offset, cursor.sequence, reason,
            )
            try:
                os.unlink(self._directory / ACK_FILE)
            except OSError:
                pass

        def below_next(segment: str) -> bool:
            following = [entry.name for entry in real if entry.name > segment]
            return not following or cursor.sequence < _first_sequence(following[0])

        if cursor.segment > newest:
            refuse("names a segment newer than every segment of the spool")
            return None
        if cursor.segment not in {entry.name for entry in real}:  # deleted once wholly acknowledged
            if not below_next(cursor.segment):
                refuse("has a sequence at or beyond the next segment's first")
                return None
            return cursor
        try:
            fd = os.open(self._directory / cursor.segment, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # deleted since the listing
            return cursor
        try:
            size = os.fstat(fd).st_size
            end, sequence, more = _walk(fd, size, _first_sequence(cursor.segment) - 1, cursor.offset, cursor.sequence)
        finally:
            os.close(fd)
        if (end, sequence) == (cursor.offset, cursor.sequence):
            return cursor
        if not more:
            if cursor.segment == newest:
                refuse(f"points beyond the last good record (offset {end}, sequence {sequence})")
                return None
            if not below_next(cursor.segment):
                refuse("has a sequence at or beyond the next segment's first")
                return None
        resumed = SpoolPosition(cursor.segment, end, sequence if end else max(sequence, 0))
        log.warning(
            "spool position %s offset %d (sequence %d) does not end a spooled record (segment is %d bytes): "
            "resuming at offset %d after sequence %d",
            self._directory / cursor.segment, cursor.offset, cursor.sequence, size, end, sequence,
        )
        return resumed

    def rewind(self) -> None:
        """Move the read position back to the acknowledged position: the next read re-sends what followed it."""
        self._seek(self._acked)

    def _seek(self, position: SpoolPosition) -> None:
        self._close_segment()
        self._passed = ""
        self._position = position

    def pending_bytes(self) -> int:
        """Bytes of segment data after the acknowledged position (complete records, and any being written)."""
        return _bytes_after(_segment_sizes(self._directory), self._acked)

    def has_pending(self) -> bool:
        """True when bytes remain after the acknowledged position."""
        return self.pending_bytes() > 0

    def close(self) -> None:
        """Close the open segment and release the lock. Safe to call twice; the reader can be used again
        afterwards (it takes the lock again)."""
        self._close_segment()
        self._close_cursor()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _relock(self) -> None:
        if self._lock is None:
            self._lock = _Lock(self._directory, READER_LOCK, "reader", self._lock_timeout)

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
