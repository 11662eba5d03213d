"""The durable on-disk queue (spool) of events not yet acknowledged by the output: one writer, one reader per directory."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from struct import Struct
from types import TracebackType
from typing import Sequence

from crc32c import crc32c

log = logging.getLogger("hostaudit.spool")

HEADER = Struct("<IIQ")  # payload length, CRC-32C of (sequence as u64 little-endian + payload), sequence
HEADER_SIZE = HEADER.size
MAX_PAYLOAD_BYTES = 2**32 - 1
MAX_SEQUENCE = 2**64 - 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
ACK_FILE = "ack"
READ_WINDOW = 1024 * 1024  # bytes read from a segment per pread() when scanning

_SEQUENCE = Struct("<Q")
_SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")
_RECOVERY_BATCH = 4096  # records held in memory at once while scanning a whole segment
_fdatasync = getattr(os, "fdatasync", os.fsync)

# Why a scan of a segment stopped.
_END = "end"  # at the end of the data: every byte was a good record
_PARTIAL = "partial"  # the next record is incomplete (being written, or torn)
_CORRUPT = "corrupt"  # the next record is complete but its CRC or sequence is wrong
_LIMIT = "limit"  # the caller's record or byte limit was reached


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
    """One record read back from the spool; acknowledge `position` once the output has it."""

    sequence: int
    payload: bytes
    position: SpoolPosition


_START = SpoolPosition("", 0, 0)


def segment_name(first_sequence: int) -> str:
    """Return the file name of the segment whose first record has `first_sequence`."""
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


def _first_sequence(segment: str) -> int:
    return int(segment[: -len(SEGMENT_SUFFIX)])


def _is_segment(name: str) -> bool:
    return _SEGMENT_NAME.fullmatch(name) is not None and _first_sequence(name) <= MAX_SEQUENCE


def _segment_sizes(directory: Path) -> list[tuple[str, int]]:
    """Return (name, size) of every segment in `directory`, oldest first; [] if the directory is missing."""
    sizes: list[tuple[str, int]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not _is_segment(entry.name):
                    continue
                try:
                    sizes.append((entry.name, entry.stat(follow_symlinks=False).st_size))
                except FileNotFoundError:  # deleted by the reader since the listing
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []
    sizes.sort()
    return sizes


def _segments(directory: Path) -> list[str]:
    """Return the segment names in `directory`, oldest first; [] if the directory is missing."""
    try:
        names = [name for name in os.listdir(directory) if _is_segment(name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def spool_size(root: Path) -> int:
    """Return the bytes held in segment files under `root` (the spool root holding one directory per dataset).

    Cheap enough to call before every append: it lists directories and stats files, it reads nothing.
    """
    total = 0
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    total += sum(size for _, size in _segment_sizes(Path(entry.path)))
                elif _is_segment(entry.name):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total


@dataclass(frozen=True, slots=True)
class _Scan:
    records: list[tuple[int, bytes, int]]  # (sequence, payload, offset after the record)
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
    """Decode the good records of a segment from `offset` up to `data_end`, in order.

    A record is good when it is complete, its CRC matches, and its sequence is greater than `floor` (then
    greater than the previous record's). Stops before `max_records` records or before exceeding
    `max_payload_bytes` of payload, except that with `take_one` the first record is taken whatever its size.
    """
    records: list[tuple[int, bytes, int]] = []
    taken = 0
    need = HEADER_SIZE
    while True:
        if len(records) >= max_records:
            return _Scan(records, offset, floor, _LIMIT)
        available = data_end - offset
        if available == 0:
            return _Scan(records, offset, floor, _END)
        if available < need:
            return _Scan(records, offset, floor, _PARTIAL)
        budget = max(max_payload_bytes - taken, 0) + HEADER_SIZE * (max_records - len(records))
        window = os.pread(fd, min(available, max(need, min(READ_WINDOW, budget))), offset)
        if len(window) < need:  # the file shrank since data_end was measured: its writer repaired it
            return _Scan(records, offset, floor, _PARTIAL)
        view = memoryview(window)
        size = len(window)
        position = 0
        while len(records) < max_records:
            if size - position < HEADER_SIZE:
                need = HEADER_SIZE
                break
            length, crc, sequence = HEADER.unpack_from(window, position)
            end = position + HEADER_SIZE + length
            if end > size:
                need = HEADER_SIZE + length
                break
            if taken + length > max_payload_bytes and (records or not take_one):
                return _Scan(records, offset + position, floor, _LIMIT)
            if sequence <= floor or crc32c(view[position + 8 : end]) != crc:
                return _Scan(records, offset + position, floor, _CORRUPT)
            records.append((sequence, window[position + HEADER_SIZE : end], offset + end))
            taken += length
            floor = sequence
            position = end
        offset += position


def _scan_to_end(fd: int, data_end: int, floor: int, last_offset: int = -1, last_sequence: int = MAX_SEQUENCE) -> _Scan:
    """Walk the good records of a whole segment from offset 0, keeping none in memory.

    Stops early after the last record that ends at or before `last_offset` (when given) with a sequence at
    most `last_sequence`. The result's `records` is always empty.
    """
    offset = 0
    bound = data_end if last_offset < 0 else min(data_end, last_offset)
    while True:
        scan = _scan(fd, offset, bound, floor, _RECOVERY_BATCH, MAX_SEQUENCE, take_one=True)
        for sequence, _, end in scan.records:
            if sequence > last_sequence:
                return _Scan([], offset, floor, _LIMIT)
            offset, floor = end, sequence
        if scan.stop != _LIMIT:
            return _Scan([], offset, floor, scan.stop)


def _load_cursor(directory: Path, warn: bool) -> SpoolPosition | None:
    """Return the acknowledgement cursor stored in `directory`, or None if there is none or it is unreadable."""
    path = directory / ACK_FILE
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
    except (ValueError, TypeError, KeyError, IndexError):
        segment = offset = sequence = None
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


class SpoolWriter:
    """Appends records to one spool directory. Exactly one writer per directory, in one thread.

    Records go to the newest segment file; a new segment (named after its first sequence) is started when the
    current one would exceed `segment_bytes`. The writer never deletes segments: the reader does.
    """

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True) -> None:
        if segment_bytes < HEADER_SIZE:
            raise ValueError(f"segment_bytes must be at least {HEADER_SIZE}, got {segment_bytes}")
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._fd: int | None = None
        self._segment = ""
        self._size = 0  # bytes of good records in the current segment
        self._dirty = False  # written since the last fsync
        self._failed: str | None = None
        self._last_sequence = 0
        _make_private_directory(self._directory, fsync)
        segments = _segments(self._directory)
        if segments:
            self._open_newest(segments[-1])
        cursor = _load_cursor(self._directory, warn=False)
        if cursor is not None:
            # Records up to the acknowledged one were delivered even if a crash lost them from the spool (a tail
            # read before it reached the disk): never hand their sequences out again, and never append behind
            # the reader (to a segment older than the one it acknowledged in), where it would not look.
            self._last_sequence = max(self._last_sequence, cursor.sequence, _first_sequence(cursor.segment))
            if self._fd is not None and cursor.segment > self._segment:
                os.close(self._fd)
                self._fd = None

    @property
    def last_sequence(self) -> int:
        """The sequence of the last record stored; the next append must start above it. 0 for a new spool."""
        return self._last_sequence

    @property
    def directory(self) -> Path:
        return self._directory

    def _open_newest(self, segment: str) -> None:
        path = self._directory / segment
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            floor = _first_sequence(segment) - 1
            scan = _scan_to_end(fd, size, floor)
            if scan.offset < size:
                os.ftruncate(fd, scan.offset)
                if self._fsync:
                    _fdatasync(fd)
                log.warning(
                    "spool segment %s has a torn or corrupt tail at offset %d (%s record): truncated, %d bytes dropped",
                    path,
                    scan.offset,
                    scan.stop,
                    size - scan.offset,
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._segment, self._size = fd, segment, scan.offset
        self._last_sequence = max(scan.sequence, 0)

    def append(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Store `records` (sequence, payload) durably and return the bytes written.

        Sequences must be strictly increasing and above `last_sequence`, else ValueError and nothing is written.
        With fsync=True the records are on disk when this returns (one fsync per segment touched; a batch
        crossing into a new segment also syncs the segment and directory entry). On OSError (disk full, I/O
        error) the records up to `last_sequence` are stored and none after it; after a failed fsync the writer
        refuses further appends: open a new SpoolWriter to re-scan the segment.
        """
        if self._failed is not None:
            raise RuntimeError(f"spool writer for {self._directory} is unusable: {self._failed}")
        previous = self._last_sequence
        for sequence, payload in records:
            if type(sequence) is not int or not previous < sequence <= MAX_SEQUENCE:
                raise ValueError(
                    f"spool {self._directory}: sequence {sequence!r} must be an integer above {previous} "
                    f"and at most {MAX_SEQUENCE}"
                )
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"spool {self._directory}: payload must be bytes, got {type(payload).__name__}")
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"spool {self._directory}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
            previous = sequence
        written = 0
        chunk: list[bytes] = []
        ends: list[tuple[int, int]] = []  # (offset in chunk after a record, its sequence)
        chunk_size = 0
        for sequence, payload in records:
            record_size = HEADER_SIZE + len(payload)
            if self._fd is None or (
                self._size + chunk_size > 0 and self._size + chunk_size + record_size > self._segment_bytes
            ):
                if chunk:
                    written += self._write(chunk, ends)
                    chunk, ends, chunk_size = [], [], 0
                self._roll(sequence)
            checksum = crc32c(payload, crc32c(_SEQUENCE.pack(sequence)))
            chunk.append(HEADER.pack(len(payload), checksum, sequence))
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
        """After a short write, cut the segment back to the last complete record so the tail stays clean."""
        assert self._fd is not None
        complete = [(end, sequence) for end, sequence in ends if end <= done]
        kept = complete[-1][0] if complete else 0
        if done > kept:
            try:
                os.ftruncate(self._fd, self._size + kept)
            except OSError as error:
                self._failed = f"could not cut a partly written record from {self._segment}: {error}"
        self._size += kept
        if complete:
            self._dirty = True
            self._last_sequence = complete[-1][1]

    def _sync(self) -> None:
        if self._fsync and self._dirty and self._fd is not None:
            try:
                _fdatasync(self._fd)
            except OSError as error:
                # After a failed fsync the page cache no longer tells what is on disk; only a re-scan does.
                self._failed = f"fsync of {self._segment} failed: {error}"
                raise
        self._dirty = False

    def _roll(self, first_sequence: int) -> None:
        """Finish the current segment (synced) and start a new one named after `first_sequence`."""
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None
        segment = segment_name(first_sequence)
        fd = os.open(self._directory / segment, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # the umask filters os.open's mode
        self._fd, self._segment, self._size, self._dirty = fd, segment, 0, False
        if self._fsync:
            try:
                _fsync_directory(self._directory)  # the new name must survive a crash before records land in it
            except OSError as error:
                self._failed = f"fsync of directory {self._directory} failed: {error}"
                raise

    def close(self) -> None:
        """Sync (when fsync=True) and close the current segment. Safe to call twice."""
        if self._fd is None:
            return
        try:
            if self._failed is None:
                self._sync()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class SpoolReader:
    """Reads records back from one spool directory, in order, and deletes what the output acknowledged.

    Exactly one reader per directory, in one thread; it runs concurrently with the writer (another process).
    Delivery is at-least-once: records after the acknowledged position are read again after a restart or
    `rewind()`.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._fd: int | None = None
        self._fd_segment = ""
        self._segment_closed = False  # a newer segment exists, so the open one is final
        self._segment_finished = False  # every byte of the open, closed segment was consumed or skipped
        self._floor = 0  # records read next must have a greater sequence
        cursor = _load_cursor(self._directory, warn=True) or _START
        self._acked = cursor
        self._position = cursor
        if cursor.segment in _segments(self._directory) and self._open(cursor.segment):
            assert self._fd is not None
            self._acked = self._position = self._realign(cursor, os.fstat(self._fd).st_size)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def acknowledged(self) -> SpoolPosition:
        """The position up to which the output has acknowledged records (where a restart resumes)."""
        return self._acked

    def _open(self, segment: str) -> bool:
        self._close_segment()
        try:
            self._fd = os.open(self._directory / segment, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        self._fd_segment = segment
        self._segment_closed = False
        self._segment_finished = False
        return True

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_segment = ""

    def _open_at_position(self) -> bool:
        """Open the segment to read next: the read position's own, or the first one after it."""
        segments = _segments(self._directory)
        position = self._position
        if not self._segment_finished and position.segment in segments and self._open(position.segment):
            self._floor = position.sequence if position.offset else _first_sequence(position.segment) - 1
            return True
        for segment in segments:
            if segment > position.segment and self._open(segment):
                self._position = SpoolPosition(segment, 0, position.sequence)
                self._floor = _first_sequence(segment) - 1
                return True
        return False

    def _realign(self, target: SpoolPosition, size: int) -> SpoolPosition:
        """Return the record boundary in the open segment to resume from, given a remembered position.

        The position is trusted only if it ends a good record with its sequence. A crash can make it point past
        the data (a tail acknowledged before it reached the disk) or into records written since; then resume
        after the last good record at or before it with a sequence at most the remembered one.
        """
        assert self._fd is not None
        floor = _first_sequence(target.segment) - 1
        scan = _scan_to_end(self._fd, size, floor, target.offset, target.sequence)
        resumed = SpoolPosition(target.segment, scan.offset, scan.sequence if scan.offset else target.sequence)
        if scan.offset != target.offset or scan.sequence != target.sequence:
            log.warning(
                "spool position %s offset %d (sequence %d) does not end a spooled record (segment is %d bytes): "
                "resuming at offset %d after sequence %d",
                self._directory / target.segment,
                target.offset,
                target.sequence,
                size,
                scan.offset,
                scan.sequence,
            )
        self._floor = scan.sequence if scan.offset else floor
        return resumed

    def _newer_segment_exists(self) -> bool:
        return any(segment > self._fd_segment for segment in _segments(self._directory))

    def read(self, max_records: int, max_bytes: int) -> list[SpooledRecord]:
        """Return up to `max_records` records (at most `max_bytes` of payload, but at least one record when any
        is available) following the last one read, in sequence order, across segments.

        Stops before a record the writer has not finished; a corrupt record in a closed segment makes it skip
        the rest of that segment (logged as an error). Returns [] when nothing new is complete.
        """
        records: list[SpooledRecord] = []
        taken = 0
        while len(records) < max_records:
            if self._fd is None and not self._open_at_position():
                break
            assert self._fd is not None
            segment = self._fd_segment
            size = os.fstat(self._fd).st_size
            if self._position.offset > size:
                self._position = self._realign(self._position, size)
            scan = _scan(
                self._fd, self._position.offset, size, self._floor, max_records - len(records), max_bytes - taken, not records
            )
            for sequence, payload, end in scan.records:
                records.append(SpooledRecord(sequence, payload, SpoolPosition(segment, end, sequence)))
                taken += len(payload)
            if scan.records:
                self._position = records[-1].position
                self._floor = scan.sequence
            if scan.stop == _LIMIT:
                break
            if not self._segment_closed:
                if not self._newer_segment_exists():
                    break  # the newest segment: the writer may still be appending
                self._segment_closed = True
                continue  # the segment is final now: scan its tail once more before moving on
            if scan.stop != _END:
                log.error(
                    "spool segment %s is corrupt at offset %d (%s record): skipped its last %d bytes, "
                    "records in them are lost",
                    self._directory / segment,
                    scan.offset,
                    scan.stop,
                    size - scan.offset,
                )
            self._segment_finished = True
            self._close_segment()
        return records

    def acknowledge(self, position: SpoolPosition) -> None:
        """Record that the output has every record up to `position`, and delete the closed segments it covers.

        The cursor file is replaced atomically but not synced: a crash may forget the last acknowledgement,
        which only re-sends records. A position at or before the current cursor is ignored.
        """
        if position <= self._acked:
            return
        self._write_cursor(position)
        self._acked = position
        if self._position < position:  # acknowledged beyond what this reader read: do not read it again
            self._seek(position)
        self._delete_acknowledged_segments()

    def _write_cursor(self, position: SpoolPosition) -> None:
        temporary = self._directory / (ACK_FILE + ".tmp")
        text = json.dumps({"segment": position.segment, "offset": position.offset, "sequence": position.sequence})
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temporary, self._directory / ACK_FILE)

    def _delete_acknowledged_segments(self) -> None:
        """Delete every closed segment that lies wholly at or before the acknowledged position."""
        sizes = _segment_sizes(self._directory)
        for segment, size in sizes[:-1]:  # the newest is never closed: the writer may be appending to it
            if segment < self._acked.segment or (segment == self._acked.segment and size <= self._acked.offset):
                try:
                    os.unlink(self._directory / segment)
                except FileNotFoundError:
                    continue

    def rewind(self) -> None:
        """Move the read position back to the acknowledged position: the next read re-sends what followed it."""
        self._seek(self._acked)

    def _seek(self, position: SpoolPosition) -> None:
        self._close_segment()
        self._segment_finished = False
        self._position = position

    def pending_bytes(self) -> int:
        """Bytes of segment data after the acknowledged position (complete records, and any being written)."""
        pending = 0
        for segment, size in _segment_sizes(self._directory):
            if segment > self._acked.segment:
                pending += size
            elif segment == self._acked.segment:
                pending += max(size - self._acked.offset, 0)
        return pending

    def has_pending(self) -> bool:
        """True when bytes remain after the acknowledged position."""
        return self.pending_bytes() > 0

    def close(self) -> None:
        """Close the open segment. Safe to call twice; the reader can be used again afterwards."""
        self._close_segment()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
