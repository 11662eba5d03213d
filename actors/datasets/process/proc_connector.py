"""The kernel's process-events connector (netlink NETLINK_CONNECTOR, CN_IDX_PROC): fork, exec, exit as they happen."""

from __future__ import annotations

import fcntl
import gc
import logging
import operator
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Sequence, TypeVar

from actors.datasets.process.capture import (CN_IDX_PROC, CN_VAL_PROC, NETLINK_CONNECTOR, NLMSG_DONE, NLMSG_HEADER,
                                             PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, PROC_EVENT_NONE,
                                             LIFELINE_FIRED, MOUNTS_FIRED, ExecReads, RawEvent, Timing, Wake,
                                             capture_wake, decode_records, gather)
from actors.datasets.process.exec_files import ExecFile, ExecFiles
from actors.hostfs.outcome import denied

LOG = logging.getLogger("hostaudit.proc_connector")
T = TypeVar("T")

PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CAP_NET_ADMIN = 12

DEFAULT_RECEIVE_BUFFER = 8 * 1024 * 1024
DEFAULT_ACK_TIMEOUT = 1.0
MAX_MESSAGES_PER_READ = 512  # drain at most this many datagrams before reading the new processes' /proc
FORK_MEMORY = 65536  # pids whose FORK we remember (for the parent and the start of a later EXEC)
QUEUE_ITEMS = 20_000  # items waiting for read(); beyond, the backlog stays in the kernel's buffer
READER = "process"  # where the reader runs: "process" (its own, real-time) or "thread" (see ProcConnector)
READER_RT_PRIORITY = 1  # SCHED_FIFO priority of the reader process: the lowest real-time one is enough
READER_NICE = -10  # the reader's nice when it cannot be real-time, or runs as a thread (needs CAP_SYS_NICE)
READER_TITLE = "hostaudit: proc-connector"  # the reader process in ps and top
PIPE_BYTES = 1 << 20  # the reader process's pipe to the relay thread
# Seconds the reader process gathers items before it sends them; the collector then applies each frame at once
# (`batch_seconds` 0), so this is the one batching wait between an exec and its event. Each frame costs a write
# here and, in the collector, a wake-up, a spool fdatasync and the producer's wake-up and output write: 100 ms
# (was 20 here + 50 there) cut the agent's CPU per exec by a third at 50 and at 200 execs/s, p99 to output ~110 ms.
# At a moderate rate a frame gathers for FRAME_HOLD_STEADY instead: 11-20% less CPU per exec again at 50 execs/s,
# p99 to output ~210 ms. A burst still goes out every FRAME_HOLD: a frame half full by then, and the frame after
# one that was (the tail of a burst).
FRAME_HOLD = 0.1
FRAME_HOLD_STEADY = 0.2
FRAME_ITEMS = 256  # ... or this many items
BURST_ITEMS = FRAME_ITEMS // 2  # a frame this full by FRAME_HOLD is a burst's
GATHERED_WAKES = 1024  # wake-ups taken without an item (FORKs alone) are made into items at this many
FINAL_PASSES = 8  # at most this many reads of what the sockets hold once the parent stops (then it exits)
FRAME_LENGTH = struct.Struct("=I")  # each frame on that pipe: its length, then a pickle
READ_SLICE = 0.25  # seconds the reader thread waits on the socket before checking for close()
# The reader process takes EXECs on a socket of their own (a socket filter splits the stream) and wakes for each
# at once; while items wait to be sent (FRAME_HOLD), the FORKs and EXITs on the main socket wait for the next
# wake-up: in a burst, one wake-up per exec instead of three. With nothing pending, and no EXEC for a FRAME_HOLD
# after the last frame was due, it wakes for anything.
GAP_SETTLE_SECONDS = 0.5  # a sequence number missing that long was dropped (the two sockets are read in turn)
GAP_TRACKED = 64  # larger gaps are counted as drops at once
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
PROC_EVENT_WHAT_OFFSET = NLMSG_HEADER.size + 20  # nlmsghdr, then cn_msg (idx, val, seq, ack, len, flags)
NANOS = 1_000_000_000


class ConnectorUnavailable(Exception):
    """The process-events connector cannot be used here; str() says why and what would fix it."""


def pickled_as_tuple(cls: type[T]) -> type[T]:
    """Class decorator for a slots dataclass: pickle it as (class, field values), which takes half the time of
    the generic way (the reader process pickles every item it sends)."""
    values = operator.attrgetter(*cls.__slots__)  # type: ignore[attr-defined]

    def __reduce__(self: T) -> tuple[type[T], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class ProcessExec:
    """A process replaced its image (execve), with what was read of it at once (`details`: the `parse` callback's
    view of its reads; None when the process was gone before it could be read)."""

    pid: int
    time: float  # epoch seconds of the exec, from the kernel's timestamp
    boot_ns: int  # the same instant in ns since boot (CLOCK_BOOTTIME, the clock of /proc start times)
    ppid: int | None  # from the FORK, or the EXIT in the same batch, when known
    fork_boot_ns: int | None  # when the process was forked (ns since boot), if the FORK was seen
    details: Any
    delay_ns: int  # from the kernel's timestamp to the moment the datagram was received
    exec_file: ExecFile | None = None  # the file the kernel opened for it, when `details` names no executable


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class ProcessExit:
    """A process (thread-group leader) exited."""

    pid: int
    time: float
    boot_ns: int
    ppid: int | None
    exit_code: int  # the exit status 0..255, or -N when signal N killed it (subprocess's returncode form)
    delay_ns: int


def subscribe_message(port: int, operation: int, ack: int = 0) -> bytes:
    """Return the datagram that (un)subscribes the socket to process events (PROC_CN_MCAST_LISTEN/IGNORE)."""
    payload = struct.pack("=I", operation)
    cn_msg = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(cn_msg), NLMSG_DONE, 0, 0, port) + cn_msg


def exit_status_code(status: int) -> int:
    """The kernel's wait status (task->exit_code) as one number: the exit code, or -signal when killed."""
    signal_number = status & 0x7F
    return (status >> 8) & 0xFF if signal_number == 0 else -signal_number


def has_capability(bit: int) -> bool:
    """Whether this process has capability `bit` in its effective set (CapEff of /proc/self/status)."""
    try:
        with open("/proc/self/status", "rb") as handle:
            status = handle.read()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith(b"CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return os.geteuid() == 0


def exec_filter(execs: bool) -> list[tuple[int, int, int, int]]:
    """A classic BPF socket filter (code, jt, jf, k) that keeps only the EXEC messages (`execs`), or all but them.
    BPF loads words big-endian: the kernel's little- or big-endian `what` is compared as the bytes it is."""
    what = struct.unpack(">I", struct.pack("=I", PROC_EVENT_EXEC))[0]
    load_word, jump_if_equal, give = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    keep, drop = (give, 0, 0, 0xFFFFFFFF), (give, 0, 0, 0)
    equal, other = (keep, drop) if execs else (drop, keep)
    return [(load_word, 0, 0, PROC_EVENT_WHAT_OFFSET), (jump_if_equal, 0, 1, what), equal, other]


def attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program to a socket (SO_ATTACH_FILTER); OSError if the kernel refuses it."""
    import ctypes

    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *op) for op in program))
    program_header = struct.pack("HxxxxxxP" if struct.calcsize("P") == 8 else "HxxP", len(program),
                                 ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program_header)  # the kernel copies the program


Captured = tuple[RawEvent, int, "ExecReads | None"]  # a message, when it was received, an EXEC's reads


def split_at_horizon(events: list[Captured]) -> tuple[list[Captured], list[Captured]]:
    """The events up to the last FORK or EXIT taken from the main socket, and the EXECs newer than that, which
    wait for the next frame: their FORKs (and parents) are still in the main socket, behind what was drained."""
    horizon = max((event.timestamp_ns for event, _, _ in events if event.what != PROC_EVENT_EXEC), default=-1)
    return ([entry for entry in events if entry[0].what != PROC_EVENT_EXEC or entry[0].timestamp_ns <= horizon],
            [entry for entry in events if entry[0].what == PROC_EVENT_EXEC and entry[0].timestamp_ns > horizon])


def _write_frame(descriptor: int, payload: bytes) -> None:
    view = memoryview(FRAME_LENGTH.pack(len(payload)) + payload)
    while view:
        view = view[os.write(descriptor, view):]


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload; None at the end of the stream (the writer exited)."""
    head = stream.read(FRAME_LENGTH.size)
    if len(head) < FRAME_LENGTH.size:
        return None
    (length,) = FRAME_LENGTH.unpack(head)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _close_descriptors_except(keep: set[int]) -> None:
    """Close every file descriptor but `keep`: a forked helper must not hold the parent's files and pipes
    open (a supervisor sees a child's death when its pipes close)."""
    low = 0
    for descriptor in sorted(keep):
        if low < descriptor:  # os.closerange(n, n) would close everything from n up (close_range(n, -1))
            os.closerange(low, descriptor)
        low = descriptor + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _reaped(pid: int | None) -> str:
    """Wait up to a second for a child that closed its pipe; say how it ended."""
    if pid is None:
        return "exited"
    for _ in range(100):
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return "exited"
        if reaped:
            code = os.waitstatus_to_exitcode(status)
            return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        time.sleep(0.01)
    return "closed its pipe"


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # the title is a convenience
        return
    setproctitle.setproctitle(title)


@dataclass(frozen=True, slots=True)
class _Clocks:
    """Offsets that turn the kernel's CLOCK_MONOTONIC timestamps into boot time and epoch time."""

    to_boot_ns: int
    to_epoch_ns: int

    @staticmethod
    def now() -> "_Clocks":
        monotonic = time.monotonic_ns()
        return _Clocks(time.clock_gettime_ns(time.CLOCK_BOOTTIME) - monotonic, time.time_ns() - monotonic)


class ProcConnector:
    """A subscription to the process connector, read by its own process (or thread).

    At each wake-up the reader drains the sockets and reads the /proc files (under `proc`) of the processes
    that exec'd at once (capture.capture_wake: in C when built, with no interpreter between the EXEC and the
    reads); at each frame it turns what it took into items (`parse` makes an exec's `details` of its reads)
    and queues them; `read()` hands them out. A /bin/true lives about 0.4 ms after its exec, and its
    executable and arguments vanish when it exits, so the reader must run within microseconds of the EXEC:

    - `reader="process"` (default): the reader is a forked child process (`hostaudit: proc-connector`) at
      real-time priority (SCHED_FIFO `rt_priority`, else nice `reader_nice`), which does nothing else, so it
      neither waits for this process's GIL nor for a CPU slice. It sends the items to a relay thread here
      through a pipe, and exits when this process closes the connector or dies.
      With `exec_files`, it also listens to fanotify's FAN_OPEN_EXEC (see ExecFiles): an exec whose
      process is gone before its /proc is read still gets its executable (`ProcessExec.exec_file`).
    - `reader="thread"`: a thread of this process at nice `reader_nice`. Any other busy thread of the process
      (encoding events) then delays it by up to the GIL's switch interval: most short-lived processes are
      missed under load (ops/bench/bench_capture.py).

    The queue is bounded: when it is full the reader stops receiving, the kernel's buffer fills, and the
    kernel drops (counted by `lost()`). Thread forks and exits are dropped; a FORK is remembered only to give
    the later EXEC its parent and start.
    """

    def __init__(self, proc: str, parse: Callable[[ExecReads], Any],
                 receive_buffer: int = DEFAULT_RECEIVE_BUFFER, ack_timeout: float = DEFAULT_ACK_TIMEOUT,
                 queue_items: int = QUEUE_ITEMS, reader: str = READER, rt_priority: int | None = READER_RT_PRIORITY,
                 reader_nice: int | None = READER_NICE, exec_files: bool = True) -> None:
        if reader not in ("process", "thread"):
            raise ValueError(f"reader must be 'process' or 'thread', not {reader!r}")
        self._proc = proc
        self._parse = parse
        self._receive_buffer = receive_buffer
        self._ack_timeout = ack_timeout
        self._queue_items = queue_items
        self._reader = reader
        self._rt_priority = rt_priority
        self._reader_nice = reader_nice
        self._want_exec_files = exec_files
        self._exec_files: ExecFiles | None = None  # opened by the reader process
        self._socket: socket.socket | None = None
        self._poller = select.poll()
        self._backlog: list[Wake] = []  # taken while waiting for the acknowledgement
        self._dedupe_execs = False  # the next frame may hold an EXEC twice (from both sockets, once: the split)
        self._forks: dict[int, tuple[int, int]] = {}  # child pid -> (parent pid, fork time ns since boot)
        self._last_seq: dict[int, int] = {}  # cpu -> last sequence number seen (gaps are drops)
        self._gaps = 0
        self._exec_socket: socket.socket | None = None  # the reader process's EXECs, split off the main socket
        self._unseen: dict[tuple[int, int], float] = {}  # (cpu, seq) missing while the two sockets are read
        self._enobufs = 0
        self._sent_losses = (0, 0)  # (gaps, ENOBUFS) as the reader process last told the parent
        self.received = 0
        self._queue: deque[list[ProcessExec | ProcessExit]] = deque()
        self._queued = 0
        self._ready = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._child: int | None = None  # the reader process
        self._frames: BinaryIO | None = None  # its pipe, read by the relay thread
        self._lifeline = -1  # our end of a pipe the reader process watches: closed, it sends what it holds and exits
        self._finishing = False

    # -- lifecycle ------------------------------------------------------------------------------------------

    def open(self) -> "ProcConnector":
        """Subscribe and start the reader; raise ConnectorUnavailable saying why when the kernel refuses or
        does not answer."""
        if not has_capability(CAP_NET_ADMIN):  # the kernel would ignore the request without a word
            raise ConnectorUnavailable("subscribing to process events needs CAP_NET_ADMIN: run hostaudit as root")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as error:
            raise ConnectorUnavailable(f"cannot open a NETLINK_CONNECTOR socket ({error.strerror}): the kernel "
                                       "lacks CONFIG_PROC_EVENTS or netlink is filtered (seccomp)") from None
        try:
            self._set_receive_buffer(sock)
            sock.bind((0, CN_IDX_PROC))
            sock.setblocking(False)
            self._socket = sock
            self._poller.register(sock.fileno(), select.POLLIN)
            self._subscribe()
        except OSError as error:
            self._forget_socket(sock)
            hint = ": it needs root (CAP_NET_ADMIN)" if denied(error) else ""
            raise ConnectorUnavailable(f"cannot subscribe to process events ({error.strerror}){hint}") from None
        except ConnectorUnavailable:
            self._forget_socket(sock)
            raise
        if self._reader == "process":
            try:
                self._thread = self._start_reader_process()
            except OSError as error:  # no process left (EAGAIN), no memory: read in a thread, less well
                LOG.warning("cannot start the process-events reader process (%s); reading in a thread, so "
                            "processes that live less than a few ms may be reported without executable",
                            error.strerror)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_thread, name="proc-connector", daemon=True)
        self._thread.start()
        return self

    def _forget_socket(self, sock: socket.socket) -> None:
        if self._socket is not None:
            self._poller.unregister(sock.fileno())
        sock.close()
        self._socket = None

    def _set_receive_buffer(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._receive_buffer)
        except OSError:  # needs CAP_NET_ADMIN; the plain option is capped at net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)

    def _subscribe(self) -> None:
        """Send PROC_CN_MCAST_LISTEN asking for an acknowledgement, and wait for it: a process outside the
        initial PID/user namespace gets no events and no acknowledgement."""
        assert self._socket is not None
        cookie = int.from_bytes(os.urandom(3), "big") + 1
        port = self._socket.getsockname()[0]
        self._socket.sendto(subscribe_message(port, PROC_CN_MCAST_LISTEN, ack=cookie), (0, 0))
        deadline = time.monotonic() + self._ack_timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._poller.poll(left * 1000):
                continue
            wake = capture_wake(self._socket, None, self._proc, MAX_MESSAGES_PER_READ)
            self._enobufs += wake.enobufs
            self._backlog.append(wake)  # another listener's acknowledgement is skipped with ours, as any
            for event, _, _ in decode_records(wake):
                if event.what == PROC_EVENT_NONE and event.ack == cookie + 1:
                    error = event.data[0] if event.data else 0
                    if error:
                        raise ConnectorUnavailable(f"the kernel refused the subscription: {os.strerror(error)}")
                    return
        raise ConnectorUnavailable(
            f"no acknowledgement from the kernel within {self._ack_timeout:g} s: the process connector only "
            "serves the initial PID and user namespaces (run on the host, or with --pid=host and CAP_NET_ADMIN)")

    def finish(self, timeout: float) -> None:
        """Have everything read so far handed out, when stopping (before close): the reader process sends what it
        holds and exits, and the relay thread queues its last frames, for read() to return. Waits up to `timeout`
        s. A reader thread's items are queued as it reads them: nothing to do."""
        if self._child is None or self._lifeline < 0:
            return
        self._finishing = True
        os.close(self._lifeline)
        self._lifeline = -1
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._ready:
            self._ready.notify_all()  # a read() waiting for more returns what is queued

    def close(self) -> None:
        """Stop the reader, unsubscribe (so the kernel stops producing events when nobody listens) and close
        the socket."""
        self._closing.set()
        with self._ready:
            self._ready.notify_all()
        self._stop_reader_process()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5 * READ_SLICE + 1)
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        sock, self._socket = self._socket, None
        if sock is None:
            return
        try:
            sock.sendto(subscribe_message(sock.getsockname()[0], PROC_CN_MCAST_IGNORE), (0, 0))
        except OSError as error:
            LOG.debug("unsubscribing from process events failed: %s", error)
        sock.close()

    # -- the caller's side ----------------------------------------------------------------------------------

    @property
    def batch_seconds(self) -> float | None:
        """The runtime's batch window for this stream: none for the reader process, which holds its items
        FRAME_HOLD itself; the runtime's default for the reader thread, which hands out what each read got."""
        return 0.0 if self._child is not None else None

    def lost(self) -> int:
        """Notifications the kernel dropped (per-CPU sequence gaps; at least one per ENOBUFS)."""
        return max(self._gaps, self._enobufs)

    def read(self, timeout: float) -> list[ProcessExec | ProcessExit]:
        """Wait up to `timeout` s for items; return all that are queued (EXECs already read), [] on timeout."""
        with self._ready:
            if not self._queued and self._failure is None and not self._closing.is_set():
                self._ready.wait(max(0.0, timeout))
            if self._failure is not None:
                raise ConnectorUnavailable(f"reading process events failed: {self._failure}") from self._failure
            items = [item for batch in self._queue for item in batch]
            self._queue.clear()
            self._queued = 0
            self._ready.notify_all()
        return items

    def _enqueue(self, items: list[ProcessExec | ProcessExit]) -> None:
        with self._ready:
            while self._queued >= self._queue_items and not self._closing.is_set():
                self._ready.wait(READ_SLICE)  # the backlog waits in the pipe and the kernel's buffer meanwhile
            self._queue.append(items)
            self._queued += len(items)
            self._ready.notify_all()

    def _fail(self, error: BaseException) -> None:
        """The reader stopped (the socket failed, not ENOBUFS; or a bug): read() raises it to the caller."""
        LOG.error("process-events reader stopped: %s", error)
        with self._ready:
            self._failure = error
            self._ready.notify_all()

    # -- the reader in a thread -----------------------------------------------------------------------------

    def _run_thread(self) -> None:
        self._raise_thread_priority()
        try:
            while not self._closing.is_set():
                items = self._read_now(READ_SLICE)
                if items:
                    self._enqueue(items)
        except Exception as error:
            self._fail(error)

    def _raise_thread_priority(self) -> None:
        """Give the calling thread nice `reader_nice` (needs CAP_SYS_NICE)."""
        if self._reader_nice is None:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._reader_nice)
        except OSError as error:  # without CAP_SYS_NICE: the reads race at normal priority
            LOG.debug("cannot raise the process-events reader to nice %d: %s", self._reader_nice, error)

    def _read_now(self, timeout: float) -> list[ProcessExec | ProcessExit]:
        """One step of the reader: wait up to `timeout` s, take what is there (the new processes read), make items."""
        if self._socket is None:
            raise ConnectorUnavailable("the process connector is closed")
        wakes, self._backlog = self._backlog, []
        if not wakes and not self._poller.poll(max(0.0, timeout) * 1000):
            return []
        wake = capture_wake(self._socket, None, self._proc, MAX_MESSAGES_PER_READ)
        self._enobufs += wake.enobufs
        items, _ = self._frame_items([*wakes, wake], [], main_more=False)
        return items

    # -- the reader in a process ----------------------------------------------------------------------------

    def _start_reader_process(self) -> threading.Thread:
        """Fork the reader process; return the (unstarted) relay thread that queues what it sends."""
        assert self._socket is not None
        frames_in, frames_out = os.pipe2(os.O_CLOEXEC)
        lifeline_in, lifeline_out = os.pipe2(os.O_CLOEXEC)  # we hold the write end: EOF there = we are gone
        try:
            fcntl.fcntl(frames_out, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # over /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE: the default 64 KiB will do
            pass
        self._split_execs()
        try:
            child = os.fork()
        except OSError:
            for descriptor in (frames_in, frames_out, lifeline_in, lifeline_out):
                os.close(descriptor)
            self._join_execs()
            raise
        if child == 0:  # the reader process: never returns
            status = 1
            try:
                os.close(frames_in)
                os.close(lifeline_out)
                self._reader_process(frames_out, lifeline_in)
                status = 0
            except BaseException:  # the parent's read() reports the failure; the details go to the log
                LOG.exception("the process-events reader process failed")
            finally:
                os._exit(status)
        os.close(frames_out)
        os.close(lifeline_in)
        if self._exec_socket is not None:  # the child reads it
            self._exec_socket.close()
            self._exec_socket = None
        self._child = child
        self._lifeline = lifeline_out
        self._frames = os.fdopen(frames_in, "rb", buffering=PIPE_BYTES)
        self._backlog = []  # the child has it
        return threading.Thread(target=self._relay, name="proc-connector-relay", daemon=True)

    def _split_execs(self) -> None:
        """Move the EXECs to a socket of their own for the reader process (socket filters: the new socket is
        bound first, so nothing falls between; an EXEC that reaches both meanwhile is read once). Without
        filters, the one socket serves as before."""
        assert self._socket is not None
        try:
            execs = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as error:
            LOG.debug("cannot open a socket for exec events (%s): one socket", error)
            return
        try:
            self._set_receive_buffer(execs)
            attach_filter(execs, exec_filter(execs=True))
            execs.bind((0, CN_IDX_PROC))
            execs.setblocking(False)
            attach_filter(self._socket, exec_filter(execs=False))
            self._dedupe_execs = True
        except OSError as error:
            LOG.debug("cannot split exec events off (%s): one socket", error)
            execs.close()
            return
        self._exec_socket = execs

    def _join_execs(self) -> None:
        """Undo _split_execs (the reader process could not be started: the thread reads the one socket)."""
        if self._exec_socket is None or self._socket is None:
            return
        self._socket.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_DETACH_FILTER", 27), 0)
        self._exec_socket.close()
        self._exec_socket = None

    def _stop_reader_process(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        try:
            os.kill(child, signal.SIGKILL)  # it keeps no state: nothing to finish
            os.waitpid(child, 0)
        except ChildProcessError:  # reaped elsewhere
            pass
        except ProcessLookupError:
            pass

    def _relay(self) -> None:
        """Read the reader process's frames and queue their items; its exit is a failure unless we closed."""
        assert self._frames is not None
        try:
            while True:
                frame = _read_frame(self._frames)
                if frame is None:
                    if self._closing.is_set() or self._finishing:
                        return
                    raise ConnectorUnavailable(f"the process-events reader process (pid {self._child}) "
                                               f"{_reaped(self._child)}")
                items, self._gaps, self._enobufs, self.received, failure = pickle.loads(frame)
                if items:
                    self._enqueue(items)
                if failure:
                    raise ConnectorUnavailable(failure)
        except Exception as error:
            if not self._closing.is_set():
                self._fail(error)

    def _reader_process(self, frames: int, lifeline: int) -> None:
        """The reader process's whole life: take, make items, send; until the parent closes its lifeline (or dies),
        then what the sockets still hold is read and sent before it exits."""
        assert self._socket is not None
        # The parent decides when this process ends: a group-wide SIGINT or SIGTERM (Ctrl-C, systemd's stop)
        # reaches the parent too, which then closes the connector (or dies, which closes the lifeline).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        execs = self._exec_socket
        keep = {0, 1, 2, self._socket.fileno(), frames, lifeline} | ({execs.fileno()} if execs else set())
        _close_descriptors_except(keep)
        gc.freeze()  # the inherited heap is never collected here: its pages stay shared with the parent
        _set_title(READER_TITLE)
        self._raise_reader_priority()
        exec_files = self._open_exec_files() if self._want_exec_files else None
        main = self._socket.fileno()
        any_waiting = select.poll()  # asked without waiting: is anything left on the sockets? (the last passes)
        any_waiting.register(main, select.POLLIN)
        if execs is not None:
            any_waiting.register(execs.fileno(), select.POLLIN)
        mounts = -1 if exec_files is None else exec_files.mounts
        gathered, self._backlog = self._backlog, []  # taken, not yet made into items (the subscription's first)
        gathered_items = sum(wake.items for wake in gathered)
        held: list[Captured] = []  # EXECs newer than the main socket's events drained so far
        main_more = False  # the last wake-up left more on the main socket than it drained
        now = time.monotonic()
        timing = Timing(now, now + FRAME_HOLD_STEADY, 0.0, FRAME_HOLD_STEADY)
        last_passes = 0  # once the lifeline closed: passes left to send what the sockets still hold, then exit
        try:
            while True:
                if last_passes:
                    wake = capture_wake(self._socket, execs, self._proc, MAX_MESSAGES_PER_READ)
                    wakes, main_more = [wake], wake.main_more
                else:  # waits and takes wake-ups until a frame is due (in C: no interpreter in between)
                    taken = gather(self._socket, execs, lifeline, mounts, self._proc, MAX_MESSAGES_PER_READ,
                                   gathered_items + len(held), main_more, timing, FRAME_ITEMS, BURST_ITEMS,
                                   FRAME_HOLD, GATHERED_WAKES)
                    wakes, main_more, timing = taken.wakes, taken.main_more, taken.timing
                    if taken.fired & LIFELINE_FIRED:  # the parent stops (finish or close) or died
                        last_passes = FINAL_PASSES  # the last passes send what is left
                    if taken.fired & MOUNTS_FIRED and exec_files is not None:
                        exec_files.mark_mounts()  # the mounts changed: mark the new filesystems
                for wake in wakes:
                    self._enobufs += wake.enobufs
                    gathered_items += wake.items
                gathered += [wake for wake in wakes if wake.records]
                if self._unseen:
                    self._settle_gaps()
                waiting = gathered_items + len(held)
                now = time.monotonic()
                due = waiting > 0 and (waiting >= FRAME_ITEMS or now >= timing.send_at or last_passes > 0 or (
                    waiting >= BURST_ITEMS and now >= timing.gathered_at + FRAME_HOLD))
                ending = last_passes == 1 or (last_passes > 0 and not (main_more or any_waiting.poll(0)))
                losses_changed = (self._gaps, self._enobufs) != self._sent_losses
                if due or ending or losses_changed or len(gathered) >= GATHERED_WAKES:
                    items, held = self._frame_items(gathered, held, main_more and not ending)
                    gathered, gathered_items = [], 0
                    if items or (self._gaps, self._enobufs) != self._sent_losses:
                        self._send(frames, items)
                        timing = timing._replace(hold=FRAME_HOLD if len(items) >= BURST_ITEMS else FRAME_HOLD_STEADY)
                    if held:
                        timing = timing._replace(gathered_at=now, send_at=now + timing.hold)
                if last_passes:
                    last_passes -= 1
                    if ending:
                        return
        except BrokenPipeError:  # the parent is gone
            return
        except Exception as error:  # the socket failed, or a bug: the parent's read() raises it
            try:  # what was taken still goes out, if it can be made into items
                items, _ = self._frame_items(gathered, held, main_more=False)
            except Exception:
                items = []
            _write_frame(frames, pickle.dumps((items, self._gaps, self._enobufs, self.received, str(error))))
            raise

    def _send(self, frames: int, items: list[ProcessExec | ProcessExit]) -> None:
        """Write one frame to the parent: the items, and the losses and messages counted so far."""
        _write_frame(frames, pickle.dumps((items, self._gaps, self._enobufs, self.received, ""),
                                          pickle.HIGHEST_PROTOCOL))
        self._sent_losses = (self._gaps, self._enobufs)

    def _open_exec_files(self) -> ExecFiles | None:
        """Listen to the files opened for exec, when the kernel (5.0+) and our rights (CAP_SYS_ADMIN) allow."""
        try:
            self._exec_files = ExecFiles().open()
        except OSError as error:
            LOG.info("process: cannot listen to exec opens with fanotify (%s); a process that exits within about "
                     "a millisecond of its exec may be reported without executable", error.strerror or error)
        return self._exec_files

    def _raise_reader_priority(self) -> None:
        """SCHED_FIFO `rt_priority` for the reader process, else nice `reader_nice` (both need CAP_SYS_NICE; a
        cgroup without real-time budget refuses the first)."""
        if self._rt_priority is not None:
            policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
            try:
                os.sched_setscheduler(0, policy, os.sched_param(self._rt_priority))
                return
            except OSError as error:
                LOG.debug("cannot make the process-events reader real-time: %s", error)
        if self._reader_nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self._reader_nice)
            except OSError as error:
                LOG.debug("cannot raise the process-events reader to nice %d: %s", self._reader_nice, error)

    def _count(self, event: RawEvent) -> None:
        if event.what == PROC_EVENT_NONE:
            return
        self.received += 1
        last = self._last_seq.get(event.cpu)
        if last is not None and event.seq > last + 1:
            missing = event.seq - last - 1
            if self._exec_socket is None or missing > GAP_TRACKED:
                self._gaps += missing
            else:  # perhaps on the other socket, read next: dropped only if it does not come
                now = time.monotonic()
                self._unseen.update(((event.cpu, seq), now) for seq in range(last + 1, event.seq))
        if last is None or event.seq > last:
            self._last_seq[event.cpu] = event.seq
        elif self._unseen:
            self._unseen.pop((event.cpu, event.seq), None)

    def _settle_gaps(self) -> None:
        """Count as dropped the sequence numbers missing for GAP_SETTLE_SECONDS."""
        settled = time.monotonic() - GAP_SETTLE_SECONDS
        for key in [key for key, noted in self._unseen.items() if noted < settled]:
            del self._unseen[key]
            self._gaps += 1

    def _frame_items(self, wakes: list[Wake], held: list[Captured], main_more: bool
                     ) -> tuple[list[ProcessExec | ProcessExit], list[Captured]]:
        """Turn what the wake-ups took (and the EXECs held from the last frame) into items, in the kernel's order.
        With `main_more`, the EXECs newer than the main socket's last event are held for the next frame."""
        events: list[Captured] = []
        for wake in wakes:
            taken = decode_records(wake)
            for event, _, _ in taken:
                self._count(event)
            events += taken
        if self._dedupe_execs:  # the first frame after the split: an EXEC may have come on both sockets
            self._dedupe_execs = False
            seen: set[tuple[int, int]] = set()
            events = [entry for entry in events if entry[0].what != PROC_EVENT_EXEC
                      or ((entry[0].cpu, entry[0].seq) not in seen and not seen.add((entry[0].cpu, entry[0].seq)))]
        events = sorted(held + events, key=lambda entry: entry[0].timestamp_ns)
        if main_more:
            events, held = split_at_horizon(events)
        else:
            held = []
        return self._interpret(events, _Clocks.now()), held

    def _interpret(self, events: list[Captured], clocks: _Clocks) -> list[ProcessExec | ProcessExit]:
        """Turn captured events into items: each EXEC with what `parse` makes of its reads, and, when /proc named
        no executable (the process was gone), the file its exec opened."""
        exit_parent: dict[int, int] = {}
        details: dict[int, Any] = {}  # id(reads) -> parsed: one read serves the EXECs of a pid in a wake-up
        execs: list[int] = []
        for event, _, reads in events:
            data = event.data
            if event.what == PROC_EVENT_EXEC:
                execs.append(data[0] if data else -1)
                if reads is not None and id(reads) not in details:
                    details[id(reads)] = self._parse(reads)
            elif event.what == PROC_EVENT_EXIT and len(data) == 6 and data[0] == data[1] and data[5] > 0:
                exit_parent[data[0]] = data[5]
        files: dict[int, ExecFile] = {}
        if self._exec_files is not None and execs:  # the executables /proc no longer showed, from the exec opens
            named = {reads.pid for event, _, reads in events if reads is not None
                     and getattr(details[id(reads)], "exe", None) is not None}
            files = self._exec_files.take(execs, {pid for pid in execs if pid not in named})
        items: list[ProcessExec | ProcessExit] = []
        for event, received_ns, reads in events:
            what, data = event.what, event.data
            if what == PROC_EVENT_FORK:
                self._remember_fork(event, clocks)
            elif len(data) < 2 or data[0] != data[1]:
                continue  # a thread's exec or exit, an acknowledgement, an event we do not follow
            elif what == PROC_EVENT_EXEC:
                items.append(self._exec_item(event, received_ns, clocks,
                                             None if reads is None else details[id(reads)], exit_parent,
                                             files.get(data[0])))
            elif what == PROC_EVENT_EXIT:
                items.append(self._exit_item(event, received_ns, clocks))
        return items

    def _remember_fork(self, event: RawEvent, clocks: _Clocks) -> None:
        if len(event.data) != 4:
            return
        _parent_pid, parent_tgid, child_pid, child_tgid = event.data
        if child_pid != child_tgid:  # a new thread, not a new process
            return
        if len(self._forks) >= FORK_MEMORY:  # forks whose exit we never saw (lost, or long-lived): oldest go
            for stale in list(self._forks)[: FORK_MEMORY // 8]:
                del self._forks[stale]
        self._forks[child_pid] = (parent_tgid, event.timestamp_ns + clocks.to_boot_ns)

    def _exec_item(self, event: RawEvent, received_ns: int, clocks: _Clocks, details: Any,
                   exit_parent: dict[int, int], exec_file: ExecFile | None) -> ProcessExec:
        pid = event.data[0]
        parent, fork_boot_ns = self._forks.get(pid, (exit_parent.get(pid), None))
        return ProcessExec(
            pid=pid,
            time=(event.timestamp_ns + clocks.to_epoch_ns) / NANOS,
            boot_ns=event.timestamp_ns + clocks.to_boot_ns,
            ppid=parent,
            fork_boot_ns=fork_boot_ns,
            details=details,
            delay_ns=max(0, received_ns - event.timestamp_ns),
            exec_file=exec_file,
        )

    def _exit_item(self, event: RawEvent, received_ns: int, clocks: _Clocks) -> ProcessExit:
        pid, _tgid, status, _signal, _parent_pid, parent_tgid = event.data
        remembered = self._forks.pop(pid, None)
        parent = parent_tgid if parent_tgid > 0 else (remembered[0] if remembered else None)
        return ProcessExit(
            pid=pid,
            time=(event.timestamp_ns + clocks.to_epoch_ns) / NANOS,
            boot_ns=event.timestamp_ns + clocks.to_boot_ns,
            ppid=parent,
            exit_code=exit_status_code(status),
            delay_ns=max(0, received_ns - event.timestamp_ns),
        )
