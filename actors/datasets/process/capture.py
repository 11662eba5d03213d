"""One wake-up of the process-events reader: drain the connector's sockets into fixed records, and read at once the
/proc files of the processes that exec'd (in C when `_capture_native` is built, else the same in Python)."""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import struct
import time
from typing import NamedTuple, Sequence

from actors.datasets.process.exe_hash import FileId, file_id
from actors.hostfs import procfs

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3

PROC_EVENT_NONE = 0x00000000  # the kernel's acknowledgement of a (un)subscribe request
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

# nlmsghdr (16 bytes) + cn_msg (20) + the head of proc_event: what, cpu, timestamp_ns (16; the union follows).
NLMSG_HEADER = struct.Struct("=IHHII")
EVENT_HEADER = struct.Struct("=IHHII IIIIHH IIQ")
EVENT_DATA_OFFSET = EVENT_HEADER.size  # 52
FORK_DATA = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
EXEC_DATA = struct.Struct("=ii")  # process_pid, process_tgid
EXIT_DATA = struct.Struct("=iiII")  # process_pid, process_tgid, exit_code, exit_signal
EXIT_PARENT = struct.Struct("=ii")  # parent_pid, parent_tgid (Linux >= 4.18)
ACK_DATA = struct.Struct("=I")  # err
RECEIVE_BYTES = 8192
# A captured message (as _capture_native.c's Record): what, cpu, seq, ack, timestamp_ns, received_ns, the number
# of data values, the index of its reads (an EXEC read at this wake-up, else -1), then six data values.
RECORD = struct.Struct("=IIIIQQqq6q")


class RawEvent(NamedTuple):
    """One decoded connector message (a named tuple: several are made per exec)."""

    what: int
    cpu: int
    seq: int
    ack: int
    timestamp_ns: int  # CLOCK_MONOTONIC, as the kernel's ktime_get_ns()
    data: tuple[int, ...]


class ExecReads(NamedTuple):
    """The /proc files of a process read just after its exec, as they came. Each is its content (a link's target
    as str, a file's bytes), None when it was not there (the process was gone), or the errno that failed it.
    When stat could not be read, nothing after it was."""

    pid: int
    exe: str | int | None
    cmdline: bytes | int | None
    stat: bytes | int | None
    status: bytes | int | None
    cwd: str | int | None
    exe_id: FileId | None  # the executable's identity (the hash cache's key), when it has a path
    cgroup: bytes | int | None


class Wake(NamedTuple):
    """What one wake-up of the reader took: its messages as RECORDs, the reads of the processes that exec'd."""

    records: bytes
    reads: list[ExecReads]
    main_more: bool  # the main socket's last drain stopped at its limit: a backlog
    enobufs: int  # datagrams the kernel dropped (ENOBUFS), as far as these drains saw
    items: int  # process EXECs and EXITs among the records (threads' and FORKs are not items)


def decode_datagram(datagram: bytes | memoryview) -> list[RawEvent]:
    """Decode the connector messages in one datagram; messages that are not process events are skipped."""
    events: list[RawEvent] = []
    offset, size = 0, len(datagram)
    while offset + EVENT_HEADER.size <= size:
        (length, kind, _flags, _seq, _port, idx, val, seq, ack, _data_length, _cflags, what, cpu,
         timestamp) = EVENT_HEADER.unpack_from(datagram, offset)
        if length < NLMSG_HEADER.size:
            break
        if kind == NLMSG_DONE and idx == CN_IDX_PROC and val == CN_VAL_PROC:
            end = min(offset + length, size)
            events.append(RawEvent(what, cpu, seq, ack, timestamp, _event_data(datagram, offset, what, end)))
        offset += (length + 3) & ~3
    return events


def _event_data(datagram: bytes | memoryview, offset: int, what: int, end: int) -> tuple[int, ...]:
    start = offset + EVENT_DATA_OFFSET
    if what == PROC_EVENT_FORK and start + FORK_DATA.size <= end:
        return FORK_DATA.unpack_from(datagram, start)
    if what == PROC_EVENT_EXEC and start + EXEC_DATA.size <= end:
        return EXEC_DATA.unpack_from(datagram, start)
    if what == PROC_EVENT_EXIT and start + EXIT_DATA.size <= end:
        head = EXIT_DATA.unpack_from(datagram, start)
        if start + EXIT_DATA.size + EXIT_PARENT.size <= end:
            return head + EXIT_PARENT.unpack_from(datagram, start + EXIT_DATA.size)
        return head + (0, 0)
    if what == PROC_EVENT_NONE and start + ACK_DATA.size <= end:
        return ACK_DATA.unpack_from(datagram, start)
    return ()


def decode_records(wake: Wake) -> list[tuple[RawEvent, int, ExecReads | None]]:
    """The messages of a wake-up, in the order taken: each with when it was received and, for an EXEC read then,
    its reads."""
    reads = wake.reads
    return [(RawEvent(what, cpu, seq, ack, timestamp, tuple(data[:count])), received_ns,
             reads[index] if index >= 0 else None)
            for what, cpu, seq, ack, timestamp, received_ns, count, index, *data in RECORD.iter_unpack(wake.records)]


def read_file(path: str, whole: bool) -> bytes | int | None:
    """procfs.read_bytes(path, whole, short_is_end=True), with a failure as its errno."""
    try:
        return procfs.read_bytes(path, whole, short_is_end=True)
    except procfs.Unreadable as error:
        return error.errno or errno.EIO


def read_link(path: str) -> str | int | None:
    """procfs.read_link(path), with a failure as its errno."""
    try:
        return procfs.read_link(path)
    except procfs.Unreadable as error:
        return error.errno or errno.EIO


def read_identity(path: str) -> FileId | None:
    try:
        return file_id(os.stat(path))
    except OSError:  # gone, denied, or a dangling link in a synthetic tree: no hash, not an error
        return None


def read_execs(proc: str, pids: Sequence[int], with_stat: bool = True) -> list[ExecReads]:
    """Read processes that have just exec'd (`proc` is "<hostfs>/proc/"): the executable and arguments of all of
    them first (what matters most, and each may exit any moment), then their other files. Without `with_stat`,
    stat is not read (the caller has it) and is left None."""
    bases = [f"{proc}{pid}/" for pid in pids]
    images = [(read_link(base + "exe"), read_file(base + "cmdline", True)) for base in bases]
    rows: list[ExecReads] = []
    for pid, base, (exe, cmdline) in zip(pids, bases, images):
        stat = read_file(base + "stat", False) if with_stat else None
        if with_stat and not isinstance(stat, bytes):
            rows.append(ExecReads(pid, exe, cmdline, stat, None, None, None, None))
            continue
        status, cwd = read_file(base + "status", False), read_link(base + "cwd")
        exe_id = read_identity(base + "exe") if isinstance(exe, str) and exe else None
        rows.append(ExecReads(pid, exe, cmdline, stat, status, cwd, exe_id, read_file(base + "cgroup", True)))
    return rows


def _drain(sock: socket.socket, most: int, buffer: bytearray, rows: list[list[int]]) -> tuple[bool, int]:
    """Receive up to `most` datagrams without waiting, as the fields of RECORDs (no read index yet); return
    whether it stopped at `most` (there may be more) and how many datagrams the kernel dropped."""
    enobufs = 0
    view = memoryview(buffer)
    for _ in range(most):
        try:
            size = sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False, enobufs
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                enobufs += 1
                continue
            raise
        received_ns = time.monotonic_ns()
        rows += [[event.what, event.cpu, event.seq, event.ack, event.timestamp_ns, received_ns, len(event.data), -1,
                  *event.data, *(0,) * (6 - len(event.data))]
                 for event in decode_datagram(view[:size])]
    return True, enobufs


def _of_a_process(row: list[int]) -> bool:
    """Whether a RECORD's fields are a process's EXEC or EXIT (not a thread's, not a FORK): what makes an item."""
    return row[0] in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and row[6] >= 2 and row[8] == row[9]


def capture_wake_python(main: socket.socket, execs: socket.socket | None, proc: str, most: int) -> Wake:
    """Drain the main socket then the EXEC socket (None when there is one socket), each up to `most` datagrams
    without waiting; read the processes whose last EXEC in them comes after their last EXIT (an exited pid may
    already be another process's) with read_execs; when EXECs were taken, drain the main socket again: their
    FORKs came before them, so they are all taken unless that drain stops at `most` (`main_more`)."""
    buffer = bytearray(RECEIVE_BYTES)
    rows: list[list[int]] = []
    main_more, enobufs = _drain(main, most, buffer, rows)
    from_main = len(rows)
    if execs is not None:
        enobufs += _drain(execs, most, buffer, rows)[1]
    live: dict[int, None] = {}  # in the order of their EXECs
    for row in rows:
        if _of_a_process(row):
            if row[0] == PROC_EVENT_EXEC:
                live.setdefault(row[8], None)
            else:
                live.pop(row[8], None)
    index_of = {pid: index for index, pid in enumerate(live)}
    for row in rows:
        if row[0] == PROC_EVENT_EXEC and _of_a_process(row):
            row[7] = index_of.get(row[8], -1)
    reads = read_execs(proc, list(live))
    if len(rows) > from_main:
        main_more, dropped = _drain(main, most, buffer, rows)
        enobufs += dropped
    items = sum(1 for row in rows if _of_a_process(row))
    return Wake(b"".join(RECORD.pack(*row) for row in rows), reads, main_more, enobufs, items)


class Timing(NamedTuple):
    """When the items a reader holds go out (monotonic seconds), and how long new ones may gather."""

    gathered_at: float  # when the first of the waiting items came
    send_at: float  # when they go out at the latest
    quiet_at: float  # until then, the main socket's events alone do not wake the reader (a FRAME_HOLD after)
    hold: float  # how long items may gather from the first: FRAME_HOLD after a full frame, else longer


class Gathered(NamedTuple):
    """What gather() took until a frame was due or something else needs the caller."""

    wakes: list[Wake]  # the wake-ups that took records (or saw drops)
    fired: int  # LIFELINE_FIRED: the parent closed the lifeline; MOUNTS_FIRED: the mount table changed
    main_more: bool  # the last wake-up left more on the main socket
    timing: Timing


LIFELINE_FIRED, MOUNTS_FIRED = 1, 2


def gather_python(main: socket.socket, execs: socket.socket | None, lifeline: int, mounts: int, proc: str,
                  most: int, waiting: int, main_more: bool, timing: Timing, frame_items: int, burst_items: int,
                  frame_hold: float, most_wakes: int) -> Gathered:
    """Wait and take wake-ups (capture_wake_python) until a frame is due, the lifeline or the mounts (-1: none)
    fire, the kernel dropped some, or `most_wakes` wake-ups took records. `waiting` items are held already.

    A frame is due at `timing.send_at`, at `frame_items` items, or at `burst_items` a FRAME_HOLD (`frame_hold`)
    after the first. The main socket's events (FORKs, EXITs) wake it only when nothing waits and no EXEC came
    for a FRAME_HOLD after the last frame was due: under a steady load they are read at the EXECs' wake-ups.
    While the main socket has more than a drain takes, it takes again without waiting."""
    gathered_at, send_at, quiet_at, hold = timing
    wakes: list[Wake] = []
    fired = 0
    while True:
        if not main_more:
            now = time.monotonic()
            busy = execs is not None and (waiting > 0 or now < quiet_at)
            poller = select.poll()
            poller.register(lifeline, select.POLLIN)
            if mounts >= 0:
                poller.register(mounts, select.POLLPRI)
            if execs is not None:
                poller.register(execs, select.POLLIN)
            if not busy:
                poller.register(main, select.POLLIN)
            until = send_at if waiting else quiet_at if busy else None
            for descriptor, events in poller.poll(-1 if until is None else max(0, math.ceil((until - now) * 1000))):
                if descriptor == lifeline:
                    fired |= LIFELINE_FIRED
                elif descriptor == mounts and events & select.POLLPRI:
                    fired |= MOUNTS_FIRED
        wake = capture_wake_python(main, execs, proc, most)
        main_more = wake.main_more
        if wake.records or wake.enobufs:
            wakes.append(wake)
        if wake.items and not waiting:
            gathered_at = time.monotonic()
            send_at = gathered_at + hold
            quiet_at = send_at + frame_hold
        waiting += wake.items
        now = time.monotonic()
        due = waiting > 0 and (waiting >= frame_items or now >= send_at or (
            waiting >= burst_items and now >= gathered_at + frame_hold))
        if due or fired or wake.enobufs or len(wakes) >= most_wakes:
            return Gathered(wakes, fired, main_more, Timing(gathered_at, send_at, quiet_at, hold))


try:
    from actors.datasets.process._capture_native import capture_wake as _capture_wake_native
    from actors.datasets.process._capture_native import gather as _gather_native
except ImportError:  # built without a C compiler: the same in Python
    _capture_wake_native = _gather_native = None
NATIVE = _capture_wake_native is not None


def capture_wake(main: socket.socket, execs: socket.socket | None, proc: str, most: int,
                 native: bool = NATIVE) -> Wake:
    """One wake-up's take (see capture_wake_python), by the C extension unless `native` is False."""
    if not native or _capture_wake_native is None:
        return capture_wake_python(main, execs, proc, most)
    return Wake(*_capture_wake_native(main.fileno(), -1 if execs is None else execs.fileno(), os.fsencode(proc),
                                      most, ExecReads))


def gather(main: socket.socket, execs: socket.socket | None, lifeline: int, mounts: int, proc: str, most: int,
           waiting: int, main_more: bool, timing: Timing, frame_items: int, burst_items: int, frame_hold: float,
           most_wakes: int, native: bool = NATIVE) -> Gathered:
    """gather_python's take, by the C extension unless `native` is False (then no interpreter runs between a
    wake-up and the next, only once a frame)."""
    if not native or _gather_native is None:
        return gather_python(main, execs, lifeline, mounts, proc, most, waiting, main_more, timing, frame_items,
                             burst_items, frame_hold, most_wakes)
    wakes, fired, main_more, gathered_at, send_at, quiet_at = _gather_native(
        main.fileno(), -1 if execs is None else execs.fileno(), lifeline, mounts, os.fsencode(proc), most,
        ExecReads, waiting, main_more, timing.gathered_at, timing.send_at, timing.quiet_at, timing.hold,
        frame_items, burst_items, frame_hold, most_wakes)
    return Gathered([Wake(*wake) for wake in wakes], fired, main_more, Timing(gathered_at, send_at, quiet_at,
                                                                              timing.hold))
