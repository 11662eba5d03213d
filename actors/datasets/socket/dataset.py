"""The socket dataset: TCP/UDP sockets from sock_diag, their direction, process and user, and their events."""

# How this dataset collects, what it reports, how it differs from Auditbeat v1 and why, and its limits:
# see README.md in this folder.

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from actors.hostfs import procfs
from actors.hostfs.outcome import Outcome, denied, outcome
from actors.hostfs.etc_files import AccountNames
from actors.datasets import DatasetContext, dataset_options
from actors.ecs import EcsField
from actors.hostfs.host_facts import read_boot_id, read_boot_time
from actors.hostfs.entity import process_entity_id, process_start_iso, socket_entity_id
from actors.event import CHANGE, STATE, Event, iso_millis
from actors.datasets.socket.sock_diag import (
    ALL_STATES, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_STATE_NAMES, TCP_SYN_RECV,
    TCP_TIME_WAIT, DestroyListener, Destroyed, DiagEntry, DiagSocket, DumpError, TcpCounters, decode_sockid,
    destroy_groups,
)

if TYPE_CHECKING:
    from actors.datasets.socket.options import SocketOptions

DATASET = "socket"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field).
FIELDS: frozenset[str] = frozenset({
    "network.direction", "network.transport", "network.type", "network.iana_number", "network.community_id",
    "network.bytes", "network.packets",
    *(f"{end}.{name}" for end in ("source", "destination", "client", "server")
      for name in ("ip", "port", "bytes", "packets")),
    "related.ip", "related.user", "process.pid", "process.name", "process.executable", "process.args",
    "process.start", "process.parent.pid", "process.entity_id", "user.id", "user.name", "group.id", "group.name",
    "error.message",
})
# Its own fields, with their types (Auditbeat's socket v1 fields, plus the marks of a short-lived socket).
AUDIT_FIELDS: Mapping[str, EcsField] = {
    "system.audit.socket.cookie": EcsField("keyword", array=False),  # the kernel's socket cookie, as a string
    "system.audit.socket.state": EcsField("keyword", array=False),
    "system.audit.socket.entity_id": EcsField("keyword", array=False),
    "system.audit.socket.short_lived": EcsField("boolean", array=False),
    "system.audit.socket.synthesized": EcsField("boolean", array=False),
}
LOG = logging.getLogger("hostaudit.socket")

SNAPSHOT_VERSION = 1
CLOSED_MEMORY = 65_536  # cookies recently reported closed, so a late destroy notification is not reported again
ATTRIBUTION_MEMORY = 16_384  # live inodes whose last attribution is remembered apart from their record

TCP = "tcp"
UDP = "udp"
IANA_NUMBER = {TCP: socket.IPPROTO_TCP, UDP: socket.IPPROTO_UDP}
TRANSPORT_OF = {socket.IPPROTO_TCP: TCP, socket.IPPROTO_UDP: UDP}

INBOUND = "inbound"
OUTBOUND = "outbound"
LISTENING = "listening"

# TCP states a dump asks for: all but TIME_WAIT and the SYN_RECV request sockets (see README.md).
TCP_STATES = ALL_STATES & ~(1 << TCP_TIME_WAIT | 1 << TCP_SYN_RECV | 1 << TCP_NEW_SYN_RECV)
# ... and those of the connections whose traffic a state report gives (listeners carry none).
TCP_CONNECTION_STATES = TCP_STATES & ~(1 << TCP_LISTEN)
# A TCP socket without inode in these states waits in a listener's accept queue: no process has it yet.
NOT_YET_ACCEPTED = frozenset({TCP_ESTABLISHED, TCP_SYN_RECV, TCP_CLOSE_WAIT})

# A socket record in a snapshot: a JSON list, indexed by these (compact: a poll may hold 100,000 of them).
R_TRANSPORT, R_FAMILY, R_LOCAL_IP, R_LOCAL_PORT, R_REMOTE_IP, R_REMOTE_PORT = range(6)
R_INODE, R_UID, R_DIRECTION, R_PROCESS, R_OPENED, R_STATE = range(6, 12)
ENDPOINT_FIELDS = slice(R_TRANSPORT, R_REMOTE_PORT + 1)  # what makes two records of one cookie the same socket

FAMILIES = (socket.AF_INET, socket.AF_INET6)
UNSPECIFIED = {4: "0.0.0.0", 6: "::"}
SECOND_NS = 1_000_000_000


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------

# Declared in options.py (SocketOptions, parse_options), checked by the configuration at load.


# ---------------------------------------------------------------------------------------------------------
# Addresses, community id, direction
# ---------------------------------------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (IPv4-mapped loopback is already written as 127.x.y.z)."""
    return address.startswith("127.") or address == "::1"


def network_type(address: str) -> str:
    """"ipv4" or "ipv6", by the address's text form."""
    return "ipv6" if ":" in address else "ipv4"


@functools.lru_cache(maxsize=4096)
def packed_ip(address: str) -> bytes:
    """The network-order bytes of an IPv4 (4 bytes) or IPv6 (16 bytes) address in text form."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def community_id(transport: str, source_ip: str, source_port: int, destination_ip: str, destination_port: int,
                 seed: int = 0) -> str:
    """Community ID v1 (github.com/corelight/community-id-spec): sha1 over seed, the ordered endpoints, proto."""
    source, destination = packed_ip(source_ip), packed_ip(destination_ip)
    if (destination, destination_port) < (source, source_port):
        source, source_port, destination, destination_port = destination, destination_port, source, source_port
    digest = hashlib.sha1(
        struct.pack("!H", seed) + source + destination
        + struct.pack("!BBHH", IANA_NUMBER[transport], 0, source_port, destination_port)
    ).digest()
    return "1:" + base64.b64encode(digest).decode()


class ListenerTable:
    """Auditbeat's ListenerTable: the (transport, port) -> local IPs of every socket with remote port 0."""

    def __init__(self, ports: Mapping[str, Mapping[str, Iterable[str]]] | None = None) -> None:
        self._ports: dict[str, dict[int, set[str]]] = {
            transport: {int(port): set(ips) for port, ips in by_port.items()}
            for transport, by_port in (ports or {}).items()
        }

    def add(self, transport: str, local_ip: str, local_port: int) -> None:
        self._ports.setdefault(transport, {}).setdefault(local_port, set()).add(local_ip)

    def direction(self, transport: str, family: int, local_ip: str, local_port: int, remote_port: int) -> str:
        """listening (remote port 0), inbound (a listener on this port and this IP or the family's any
        address), else outbound."""
        if remote_port == 0:
            return LISTENING
        ips = self._ports.get(transport, {}).get(local_port)
        if ips and (local_ip in ips or UNSPECIFIED[family] in ips):
            return INBOUND
        return OUTBOUND

    def to_json(self) -> dict[str, dict[str, list[str]]]:
        return {transport: {str(port): sorted(ips) for port, ips in by_port.items()}
                for transport, by_port in self._ports.items()}


# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# Attribution: which process holds a socket inode
# ---------------------------------------------------------------------------------------------------------

@dataclass
class ScannedProcess:
    """What one scan of /proc/PID learnt: identity, names, how many files were open, which socket inodes, and,
    for a process holding sockets, its arguments and group."""

    pid: int
    start_ticks: int
    name: str
    executable: str
    open_files: int  # st_size of /proc/PID/fd at the scan (0 when the kernel does not report it)
    inodes: set[int] = field(default_factory=set)
    ppid: int | None = None
    args: tuple[str, ...] | None = None  # /proc/PID/cmdline; None when not read (no socket) or unreadable
    gid: str | None = None  # the real group id (/proc/PID/status Gid), a string as ECS's group.id

    @property
    def key(self) -> str:
        return f"{self.pid}:{self.start_ticks}"

    def info(self) -> list[Any]:
        """What a snapshot keeps of the process ("processes" values; see PI_*)."""
        return [self.pid, self.start_ticks, self.name, self.executable,
                None if self.args is None else list(self.args), self.ppid, self.gid]


# A process in a snapshot's "processes": a JSON list indexed by these. Snapshots written before args, ppid and gid
# were kept have the first four only.
PI_PID, PI_START_TICKS, PI_NAME, PI_EXECUTABLE, PI_ARGS, PI_PPID, PI_GID = range(7)


class SocketOwners:
    """inode -> owning process, learnt by scanning /proc/PID/fd as rarely as the unknown inodes allow."""

    FULL_SCANS_BEFORE_GIVING_UP = 2

    def __init__(self, hostfs: Path, full_scan_interval: float) -> None:
        self.proc = procfs.host_path(hostfs, "/proc")
        self.full_scan_interval = full_scan_interval
        self.processes: dict[int, ScannedProcess] = {}
        self.owner: dict[int, int] = {}  # inode -> pid
        self.given_up: set[int] = set()  # inodes full scans did not find: not looked for again
        self._misses: dict[int, int] = {}  # inode -> full scans that did not find it
        self._last_full_scan = float("-inf")
        self._open_file_counts = self._kernel_counts_open_files()
        self.scans = 0  # processes scanned since start (for tests and benchmarks)

    def _kernel_counts_open_files(self) -> bool:
        try:
            return os.stat(self.proc / "self" / "fd").st_size > 0
        except OSError:
            return False

    def lookup(self, inode: int) -> ScannedProcess | None:
        pid = self.owner.get(inode)
        return None if pid is None else self.processes.get(pid)

    def resolve(self, unknown: set[int]) -> None:
        """Scan processes, cheapest guesses first, until every inode of `unknown` has an owner.

        1. processes never scanned (new since the last scan that needed them);
        2. processes whose number of open files changed, for inodes no full scan has missed yet (one a full scan
           missed belongs to no process then: a kernel socket, another pid namespace, a descriptor in flight);
        3. every process, at most every `full_scan_interval` seconds.
        """
        unknown = {inode for inode in unknown if inode not in self.owner and inode not in self.given_up}
        if not unknown:
            return
        pids = self._current_pids()
        unscanned = [pid for pid in pids if pid not in self.processes]
        if self._scan_until_found(unscanned, unknown):
            return
        if len(unscanned) < len(pids):  # else step 1 was a full scan
            never_missed = {inode for inode in unknown if inode not in self._misses}
            if never_missed:
                self._scan_until_found(self._changed(pids), never_missed)
                unknown = {inode for inode in unknown if inode not in self.owner}
            if not unknown or time.monotonic() - self._last_full_scan < self.full_scan_interval:
                return
            self._scan_until_found(pids, unknown)
        self._last_full_scan = time.monotonic()
        self._missed_by_full_scan(unknown)

    def _missed_by_full_scan(self, unknown: set[int]) -> None:
        """Give up an inode after two full scans missed it (one could race with its process's start)."""
        for inode in unknown:
            misses = self._misses.get(inode, 0) + 1
            if misses >= self.FULL_SCANS_BEFORE_GIVING_UP:
                self._misses.pop(inode, None)
                self.given_up.add(inode)
            else:
                self._misses[inode] = misses

    def forget_inodes(self, inodes: Iterable[int]) -> None:
        """Drop what is known of sockets that no longer exist."""
        for inode in inodes:
            pid = self.owner.pop(inode, None)
            if pid is not None and pid in self.processes:
                self.processes[pid].inodes.discard(inode)
            self.given_up.discard(inode)
            self._misses.pop(inode, None)

    def _current_pids(self) -> list[int]:
        """List /proc; forget the processes that are gone."""
        try:
            pids = [int(name) for name in os.listdir(self.proc) if name.isdigit()]
        except OSError as error:
            raise procfs.Unreadable(self.proc, error) from error
        alive = set(pids)
        for pid in [pid for pid in self.processes if pid not in alive]:
            self._forget_process(pid)
        return pids

    def _changed(self, pids: Iterable[int]) -> list[int]:
        """Scanned processes whose number of open files changed since (or, without that count, socket owners)."""
        if not self._open_file_counts:
            return [pid for pid, process in self.processes.items() if process.inodes]
        changed = []
        for pid in pids:
            process = self.processes.get(pid)
            if process is not None and self._open_files(pid) != process.open_files:
                changed.append(pid)
        return changed

    def _open_files(self, pid: int) -> int:
        try:
            return os.stat(self.proc / str(pid) / "fd").st_size
        except OSError:
            return -1

    def _scan_until_found(self, pids: Iterable[int], unknown: set[int]) -> bool:
        for pid in pids:
            process = self._scan(pid)
            if process is not None:
                unknown -= process.inodes
                if not unknown:
                    return True
        return not unknown

    def _scan(self, pid: int) -> ScannedProcess | None:
        """Read one process's socket descriptors, name, executable and start time; None when it is gone."""
        self.scans += 1
        base = self.proc / str(pid)
        identity = self._identity(base)
        open_files = self._open_files(pid)
        inodes = self._socket_inodes(base / "fd") if identity is not None else None
        if identity is None or inodes is None:
            self._forget_process(pid)
            return None
        name, start_ticks, ppid, executable = identity
        previous = self.processes.get(pid)
        self._forget_process(pid)
        process = ScannedProcess(pid, start_ticks, name, executable, open_files, inodes, ppid)
        if inodes:
            self._describe(process, base, previous)
        self.processes[pid] = process
        for inode in inodes:
            self.owner.setdefault(inode, pid)
        return process

    def _identity(self, base: Path) -> tuple[str, int, int, str] | None:
        stat = procfs.read_stat(base)
        if stat is None:
            return None
        try:
            executable = procfs.read_link(base / "exe") or ""
        except procfs.Unreadable:  # a kernel thread, or not ours to read
            executable = ""
        return stat.comm, stat.start_ticks, stat.ppid, executable

    @staticmethod
    def _describe(process: ScannedProcess, base: Path, previous: ScannedProcess | None) -> None:
        """Read the arguments and group of a process that holds sockets, once per process image: a rescan of
        the same process (pid, start) with the same name and executable keeps what the last one read."""
        if previous is not None and previous.args is not None and (
                previous.start_ticks, previous.name, previous.executable) == (
                process.start_ticks, process.name, process.executable):
            process.args, process.gid = previous.args, previous.gid
            return
        try:
            cmdline = procfs.read_bytes(base / "cmdline")
            status = procfs.read_bytes(base / "status", whole=False)
        except procfs.Unreadable:  # not ours to read: the process is still named by its stat and exe
            return
        if cmdline is not None:
            process.args = procfs.parse_cmdline(cmdline)
        ids = procfs.parse_status_ids(status) if status is not None else None
        if ids is not None:
            process.gid = ids[3]

    @staticmethod
    def _socket_inodes(fd_dir: Path) -> set[int] | None:
        """The socket inodes among a process's descriptors; None when the process is gone or unreadable."""
        try:
            names = os.listdir(fd_dir)
        except OSError as error:
            if outcome(error) is Outcome.OTHER:
                raise procfs.Unreadable(fd_dir, error) from error
            return None  # vanished, or not ours to read
        inodes: set[int] = set()
        prefix = f"{fd_dir}/"
        for name in names:
            try:
                target = os.readlink(prefix + name)
            except OSError:  # closed between the listing and the readlink
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        return inodes

    def _forget_process(self, pid: int) -> None:
        process = self.processes.pop(pid, None)
        if process is None:
            return
        for inode in process.inodes:
            if self.owner.get(inode) == pid:
                del self.owner[inode]


# ---------------------------------------------------------------------------------------------------------
# One close per socket
# ---------------------------------------------------------------------------------------------------------

class ClosedCookies:
    """The keys (kernel cookies) of the sockets reported closed lately, by a poll's diff or by the stream.

    Whichever path sees a close first reports it; the other finds the key here and stays silent: the stream
    skips a destroy notification of a socket a poll already reported closed, and a poll drops a dumped socket
    the stream has closed (a cookie is unique per boot, so a closed socket never comes back under it). Bounded:
    the oldest keys are forgotten past `capacity`.
    """

    def __init__(self, capacity: int = CLOSED_MEMORY) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._by_stream: set[str] = set()  # closed by the stream since the last poll

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str, by_stream: bool = False) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        if by_stream:
            self._by_stream.add(key)

    def take_closed_by_stream(self) -> set[str]:
        """The keys the stream closed since the last call (a poll's), and forget that they were new."""
        taken, self._by_stream = self._by_stream, set()
        return taken


# ---------------------------------------------------------------------------------------------------------
# Observation: one poll of the kernel's socket tables -> a JSON-serialisable snapshot
# ---------------------------------------------------------------------------------------------------------

def new_record(transport: str, family: int, local_ip: str, local_port: int, remote_ip: str, remote_port: int,
               inode: int, uid: int | None, direction: str = "", process: str = "", opened_at: float | None = None,
               state: int | None = None) -> list[Any]:
    """A socket record as snapshots hold it (a JSON list, see R_*). `process` is a key of the snapshot's
    "processes" ("pid:start_ticks"), "" when unknown; `uid` None when unknown; `opened_at` None when the socket
    was already there at the first poll."""
    return [transport, family, local_ip, local_port, remote_ip, remote_port, inode, uid, direction, process,
            opened_at, state]


def new_snapshot(sockets: Mapping[str, list[Any]], processes: Mapping[str, list[Any]] | None = None,
                 listeners: ListenerTable | None = None, boot_id: str = "", observed_at: float = 0.0) -> dict[str, Any]:
    """A snapshot: sockets by kernel cookie, the processes they reference ("pid:start" -> [pid, start_ticks,
    name, executable, args, ppid, gid], see PI_*), the listener table, the boot it belongs to, and the keys the
    stream has closed since."""
    return {"version": SNAPSHOT_VERSION, "boot_id": boot_id, "observed_at": observed_at, "sockets": dict(sockets),
            "processes": dict(processes or {}), "listeners": (listeners or ListenerTable()).to_json(), "closed": []}


@dataclass
class _Known:
    """A socket seen by the previous poll: its snapshot key and record, and whether it is reported at all."""

    key: str
    record: list[Any]
    reported: bool


class SocketObserver:
    """Dumps sockets, keeps what it learnt about each (by its raw sockid) from one poll to the next, and
    attributes new ones to processes."""

    def __init__(self, hostfs: Path, options: SocketOptions, closed: ClosedCookies | None = None) -> None:
        self.hostfs = hostfs
        self.options = options
        self.closed = closed if closed is not None else ClosedCookies()
        self.owners = SocketOwners(hostfs, options.full_scan_interval)
        self.listeners = ListenerTable()
        self._diag: DiagSocket | None = None
        self._known: dict[bytes, _Known] = {}
        self._process_info: dict[str, list[Any]] = {}
        # inode -> (process key, its "processes" value, see PI_*) of its last attribution, least recent first
        self._attributed: OrderedDict[int, tuple[str, list[Any]]] = OrderedDict()
        self._polled = False
        self._udp_unavailable = False
        self._per_family_tcp = False  # the kernel refused one TCP dump of both families (see _dump_tcp)
        self.boot_id = read_boot_id(hostfs)  # read once: it changes only with a reboot, which restarts the agent

    def _diag_socket(self) -> DiagSocket:
        """The dump socket, opened on first use; the kernel leaves loopback sockets out unless they are reported."""
        if self._diag is None:
            self._diag = DiagSocket(exclude_loopback=not self.options.include_localhost)
        return self._diag

    def _dumps(self) -> list[tuple[str, list[DiagEntry]]]:
        """One dump per family and protocol: TCP always, UDP with include_udp (skipped, after one warning, when
        the kernel has no UDP sock_diag)."""
        diag = self._diag_socket()
        dumps = [(TCP, self._dump_tcp(diag, TCP_STATES))]
        if self.options.include_udp and not self._udp_unavailable:
            try:
                dumps += [(UDP, diag.dump(family, socket.IPPROTO_UDP, ALL_STATES)) for family in FAMILIES]
            except DumpError as error:
                self._udp_unavailable = True
                LOG.warning("The kernel cannot list UDP sockets (%s; is the udp_diag module available?): "
                            "socket.include_udp is ignored", error)
        return dumps

    def _dump_tcp(self, diag: DiagSocket, states: int,
                  counters: dict[bytes, TcpCounters] | None = None) -> list[DiagEntry]:
        """The TCP sockets of both families: one dump (AF_UNSPEC), or one per family where the kernel refuses it."""
        if not self._per_family_tcp:
            try:
                return diag.dump(socket.AF_UNSPEC, socket.IPPROTO_TCP, states, counters)
            except DumpError as error:
                self._per_family_tcp = True
                LOG.info("The kernel does not dump TCP sockets of both families at once (%s): one dump per family",
                         error.strerror or error)
        return [entry for family in FAMILIES for entry in diag.dump(family, socket.IPPROTO_TCP, states, counters)]

    def observe(self) -> dict[str, Any]:
        """Dump the sockets, reuse what the previous poll learnt of each, and describe the new ones."""
        now = time.time()
        listeners = ListenerTable()
        known, fresh = self._carry_over(self._dumps(), listeners)
        new_records = self._add_fresh(fresh, known, listeners, opened_at=now if self._polled else None)
        for record in new_records:  # once every listener is known
            record[R_DIRECTION] = listeners.direction(*_direction_inputs(record))
        self._attribute(known)
        self._forget_gone(known)
        self._known, self.listeners, self._polled = known, listeners, True
        return self._snapshot(now, known, listeners)

    def _carry_over(self, dumps: list[tuple[str, list[DiagEntry]]], listeners: ListenerTable
                    ) -> tuple[dict[bytes, _Known], list[tuple[str, DiagEntry]]]:
        """Keep the previous poll's record of every socket still there (by raw sockid: no decoding); return
        them and the entries never seen. A socket the stream closed since is not kept, even if dumped."""
        known: dict[bytes, _Known] = {}
        fresh: list[tuple[str, DiagEntry]] = []
        previous = self._known
        closed_by_stream = self.closed.take_closed_by_stream()
        for transport, entries in dumps:
            for entry in entries:
                seen = previous.get(entry.sockid)
                if seen is None:
                    fresh.append((transport, entry))
                    continue
                if closed_by_stream and seen.key in closed_by_stream:
                    continue
                record = seen.record
                if record[R_STATE] != entry.state:
                    record = record.copy()
                    record[R_STATE] = entry.state
                    seen = _Known(seen.key, record, seen.reported)
                known[entry.sockid] = seen
                if record[R_REMOTE_PORT] == 0:
                    listeners.add(transport, record[R_LOCAL_IP], record[R_LOCAL_PORT])
        return known, fresh

    def _add_fresh(self, fresh: list[tuple[str, DiagEntry]], known: dict[bytes, _Known], listeners: ListenerTable,
                   opened_at: float | None) -> list[list[Any]]:
        """Decode the sockets never seen, add them to `known` and the listeners; return their new records."""
        records = []
        for transport, entry in fresh:
            seen = self._new_socket(transport, entry, opened_at)
            if seen is not None:
                known[entry.sockid] = seen
                records.append(seen.record)
                if seen.record[R_REMOTE_PORT] == 0:
                    listeners.add(transport, seen.record[R_LOCAL_IP], seen.record[R_LOCAL_PORT])
        return records

    def _new_socket(self, transport: str, entry: DiagEntry, opened_at: float | None) -> _Known | None:
        if entry.inode == 0 and transport == TCP and entry.state in NOT_YET_ACCEPTED:
            return None
        endpoints = decode_sockid(entry.family, entry.sockid)
        if endpoints.local_port == 0 or str(endpoints.cookie) in self.closed:
            return None
        uid = entry.uid if entry.inode else None  # without an inode the kernel says 0 whoever owned it
        record = new_record(transport, 4 if entry.family == socket.AF_INET else 6, endpoints.local_ip,
                            endpoints.local_port, endpoints.remote_ip, endpoints.remote_port, entry.inode, uid,
                            opened_at=opened_at, state=entry.state)
        reported = self.options.include_localhost or not (
            is_loopback(endpoints.local_ip) or is_loopback(endpoints.remote_ip))
        return _Known(str(endpoints.cookie), record, reported)

    def _attribute(self, known: dict[bytes, _Known]) -> None:
        """Give a process to every reported socket that has an inode and none yet: the process holding the inode
        now, else the one that held it when it was last attributed (its process may have exited since)."""
        waiting = [seen for seen in known.values()
                   if seen.reported and not seen.record[R_PROCESS] and seen.record[R_INODE]]
        if not waiting:
            return
        self.owners.resolve({seen.record[R_INODE] for seen in waiting})
        for seen in waiting:
            inode = seen.record[R_INODE]
            process = self.owners.lookup(inode)
            if process is not None:
                info = self._process_info.get(process.key)
                if info is None:
                    info = process.info()
                attribution = (process.key, info)
            else:
                attribution = self._attributed.get(inode)
                if attribution is None:
                    continue
            self._remember_attribution(inode, attribution)
            key, info = attribution
            seen.record = seen.record.copy()
            seen.record[R_PROCESS] = key
            self._process_info[key] = info

    def _remember_attribution(self, inode: int, attribution: tuple[str, list[Any]]) -> None:
        self._attributed[inode] = attribution
        self._attributed.move_to_end(inode)
        while len(self._attributed) > ATTRIBUTION_MEMORY:
            self._attributed.popitem(last=False)

    def _forget_gone(self, known: dict[bytes, _Known]) -> None:
        """Forget the owners and attributions of inodes no dumped socket has any more (an inode that moved to a
        new record, its endpoints changed, is still there)."""
        gone = {seen.record[R_INODE] for sockid, seen in self._known.items() if sockid not in known}
        gone.discard(0)
        if not gone:
            return
        gone -= {seen.record[R_INODE] for seen in known.values()}
        self.owners.forget_inodes(gone)
        for inode in gone:
            self._attributed.pop(inode, None)

    def _snapshot(self, now: float, known: dict[bytes, _Known], listeners: ListenerTable) -> dict[str, Any]:
        sockets = {seen.key: seen.record for seen in known.values() if seen.reported}
        referenced = {record[R_PROCESS] for record in sockets.values() if record[R_PROCESS]}
        self._process_info = {key: info for key, info in self._process_info.items() if key in referenced}
        return new_snapshot(sockets, self._process_info, listeners, self.boot_id, now)

    def traffic(self) -> dict[str, "Traffic"]:
        """What the kernel has counted so far for each TCP connection the last poll reported, by key: one dump
        with tcp_info per family, matched by raw sockid (the cookie and the endpoints)."""
        if not self._known:
            return {}
        diag = self._diag_socket()
        counters: dict[bytes, TcpCounters] = {}
        self._dump_tcp(diag, TCP_CONNECTION_STATES, counters)
        return {seen.key: Traffic(*counted) for sockid, counted in counters.items()
                if (seen := self._known.get(sockid)) is not None and seen.reported}

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None


def _direction_inputs(record: Sequence[Any]) -> tuple[str, int, str, int, int]:
    return (record[R_TRANSPORT], record[R_FAMILY], record[R_LOCAL_IP], record[R_LOCAL_PORT],
            record[R_REMOTE_PORT])


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SocketAction:
    """One `event.action` of the dataset: its kind, its ECS event.type, and its word in the message."""

    name: str
    kind: str
    type: str
    verb: str


EXISTING_SOCKET = SocketAction("existing_socket", STATE, "info", "OPEN")
SOCKET_OPENED = SocketAction("socket_opened", CHANGE, "start", "OPENED")
SOCKET_CLOSED = SocketAction("socket_closed", CHANGE, "end", "CLOSED")


@dataclass(frozen=True)
class Traffic:
    """What the kernel counted for a TCP socket (tcp_info) so far or by the time it was destroyed, from this
    host's side."""

    sent_bytes: int
    received_bytes: int
    sent_packets: int
    received_packets: int

    @classmethod
    def from_destroyed(cls, item: Destroyed) -> "Traffic | None":
        if item.bytes_acked is None or item.bytes_received is None:
            return None
        return cls(item.bytes_acked, item.bytes_received, item.segments_out or 0, item.segments_in or 0)


@dataclass(frozen=True)
class EventContext:
    """What turning a record into an event needs besides the record."""

    host_id: str
    users: AccountNames
    processes: Mapping[str, Sequence[Any]]
    boot_time: int | None = None  # btime of /proc/stat, for process.start
    # process key -> its process.* and group.* fields, made once for all the events of one report, diff or batch
    described: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=dict)


# A socket's opened, state and closed events share its id: hashed once while it is among the last 16,384.
_socket_entity_id = functools.lru_cache(maxsize=16384)(socket_entity_id)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _actor(kind: str, name: str, label: str, number: int) -> str:
    """"process sshd (PID: 22799)", or "process (PID: 22799)" when the name is unknown."""
    return f"{kind} {name} ({label}: {number})" if name else f"{kind} ({label}: {number})"


def socket_message(record: Sequence[Any], verb: str, process: tuple[str, int] | None,
                   user: tuple[str, int] | None) -> str:
    """Auditbeat v1's message: "<Direction> socket (<endpoints>) <VERB> by process <name> (PID: <pid>) and
    user <name> (UID: <uid>)". `process` is (name, pid) and `user` (name, uid), None when unknown: what is
    unknown is left out ("... CLOSED by user root (UID: 0)", "... CLOSED"), never written as -1 or ""."""
    local = _endpoint(record[R_LOCAL_IP], record[R_LOCAL_PORT])
    remote = _endpoint(record[R_REMOTE_IP], record[R_REMOTE_PORT])
    direction = record[R_DIRECTION]
    endpoints = {INBOUND: f"{remote} -> {local}", OUTBOUND: f"{local} -> {remote}"}.get(direction, local)
    actors = []
    if process is not None:
        actors.append(_actor("process", process[0], "PID", process[1]))
    if user is not None:
        actors.append(_actor("user", user[0], "UID", user[1]))
    by = f" by {' and '.join(actors)}" if actors else ""
    return f"{direction.title()} socket ({endpoints}) {verb}{by}"


def _network_fields(record: Sequence[Any]) -> dict[str, Any]:
    """network.*, source.* and destination.* of a record, source and destination by direction, and the same
    ends as client.* (who initiated) and server.*."""
    transport, direction = record[R_TRANSPORT], record[R_DIRECTION]
    local = {"ip": record[R_LOCAL_IP], "port": record[R_LOCAL_PORT]}
    remote = {"ip": record[R_REMOTE_IP], "port": record[R_REMOTE_PORT]}
    fields: dict[str, Any] = {"network": {"direction": direction, "transport": transport,
                                          "type": network_type(record[R_LOCAL_IP]),
                                          "iana_number": str(IANA_NUMBER[transport])}}
    if direction == LISTENING:
        fields["destination"], fields["server"] = local, dict(local)
        fields["related"] = {"ip": [local["ip"]]}
        return fields
    # source is the end that initiated the connection: ECS's client, as Auditbeat's socket flows set it
    source, destination = (remote, local) if direction == INBOUND else (local, remote)
    fields["source"], fields["destination"] = source, destination
    fields["client"], fields["server"] = dict(source), dict(destination)
    fields["network"]["community_id"] = community_id(transport, source["ip"], source["port"], destination["ip"],
                                                     destination["port"])
    fields["related"] = {"ip": list(dict.fromkeys([local["ip"], remote["ip"]]))}
    return fields


def _add_traffic(fields: dict[str, Any], direction: str, traffic: Traffic) -> None:
    """source/destination (and client/server) bytes and packets by direction: what each end sent (local is the
    source of an outbound socket), and their totals in network.*."""
    if direction == LISTENING:
        return
    local_sent = (traffic.sent_bytes, traffic.sent_packets)
    local_received = (traffic.received_bytes, traffic.received_packets)
    from_source, from_destination = (local_received, local_sent) if direction == INBOUND else (local_sent,
                                                                                                local_received)
    for end, (sent_bytes, sent_packets) in (("source", from_source), ("client", from_source),
                                            ("destination", from_destination), ("server", from_destination)):
        fields[end].update(bytes=sent_bytes, packets=sent_packets)
    fields["network"].update(bytes=traffic.sent_bytes + traffic.received_bytes,
                             packets=traffic.sent_packets + traffic.received_packets)


SHORT_LIVED_ERROR = "socket opened and closed between two polls: process and user unknown"


def _error_message(record: Sequence[Any]) -> str:
    if record[R_INODE] == 0:
        return "process has exited (inode=0)"
    return f"process not found (inode={record[R_INODE]})"


def socket_event(record: Sequence[Any], key: str, action: SocketAction, context: EventContext, timestamp: float,
                 traffic: Traffic | None = None, closed_at: float | None = None,
                 audit_extra: Mapping[str, Any] | None = None, error: str = "") -> Event:
    """Return the event for `action` on one socket record (key = its kernel cookie); `error` says why the
    process is unknown when the record cannot tell."""
    fields = _network_fields(record)
    audit: dict[str, Any] = {"cookie": key}
    state = record[R_STATE]
    if action is not SOCKET_CLOSED and record[R_TRANSPORT] == TCP and state in TCP_STATE_NAMES:
        audit["state"] = TCP_STATE_NAMES[state]
    if context.host_id:
        audit["entity_id"] = _socket_entity_id(context.host_id, record[R_INODE], record[R_LOCAL_IP],
                                              record[R_REMOTE_IP], record[R_LOCAL_PORT], record[R_REMOTE_PORT])
    audit.update(audit_extra or {})
    fields["system"] = {"audit": {"socket": audit}}
    process = _add_process(fields, record, context)
    user = _add_user(fields, record, context)
    if process is None:
        fields["error"] = {"message": error or _error_message(record)}
    if traffic is not None:
        _add_traffic(fields, record[R_DIRECTION], traffic)
    if closed_at is not None:
        opened_at = record[R_OPENED]  # when a poll saw the socket open; None for one there at the first poll
        fields["event"] = {"end": iso_millis(closed_at)} if opened_at is None else {
            "start": iso_millis(opened_at), "end": iso_millis(closed_at),
            "duration": max(0, round((closed_at - opened_at) * SECOND_NS))}
    return Event(
        dataset=DATASET, action=action.name, kind=action.kind, category=("network",),
        type=("connection", action.type),
        message=socket_message(record, action.verb, process, user),
        fields=fields, timestamp=timestamp,
    )


def _add_process(fields: dict[str, Any], record: Sequence[Any], context: EventContext) -> tuple[str, int] | None:
    """Add process.* and group.* of the record's process; return its (name, pid), None (and neither) when
    unknown. What the process's scan could not read is left out."""
    key = record[R_PROCESS]
    described = context.described.get(key) if key else None
    if described is None:
        info = context.processes.get(key) if key else None
        if info is None:
            return None
        described = context.described[key] = _process_fields(info, context)
    process, group = described
    fields["process"] = dict(process)
    if group is not None:
        fields["group"] = dict(group)
    return process.get("name", ""), process["pid"]


def _process_fields(info: Sequence[Any], context: EventContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """process.* and group.* (None when the gid is unknown) of a snapshot's process (see PI_*)."""
    pid, start_ticks, name, executable = info[PI_PID], info[PI_START_TICKS], info[PI_NAME], info[PI_EXECUTABLE]
    args, ppid, gid = (list(info[PI_ARGS:PI_GID + 1]) + [None] * 3)[:3]  # absent from older snapshots
    process: dict[str, Any] = {"pid": pid}
    if name:
        process["name"] = name
    if executable:
        process["executable"] = executable
    if args:
        process["args"] = list(args)
    if context.boot_time is not None:
        process["start"] = process_start_iso(context.boot_time, start_ticks)
    if ppid:
        process["parent"] = {"pid": ppid}
    if context.host_id:
        process["entity_id"] = process_entity_id(context.host_id, pid, start_ticks)
    if gid is None:
        return process, None
    group_name = context.users.group(gid)
    return process, {"id": gid, **({"name": group_name} if group_name else {})}


def _add_user(fields: dict[str, Any], record: Sequence[Any], context: EventContext) -> tuple[str, int] | None:
    """Add user.id (the socket's uid, a string) and user.name (from <hostfs>/etc/passwd, left out when the uid has
    no account); return (name, uid), None (and no user.*) when the uid is unknown."""
    uid = record[R_UID]
    if uid is None:
        return None
    name = context.users.user(uid) or ""
    fields["user"] = {"id": str(uid), **({"name": name} if name else {})}
    if name:
        fields["related"]["user"] = [name]
    return name, uid


# ---------------------------------------------------------------------------------------------------------
# Snapshots: reading (after a JSON round trip too), diffing, folding in the stream
# ---------------------------------------------------------------------------------------------------------

class LiveSockets:
    """A snapshot's sockets less those the stream has closed since the poll, read without copying them."""

    def __init__(self, sockets: Mapping[str, list[Any]], closed: Iterable[str]) -> None:
        self._sockets = sockets
        self._closed = frozenset(closed)

    def get(self, key: str) -> list[Any] | None:
        return None if key in self._closed else self._sockets.get(key)

    def mapping(self) -> Mapping[str, list[Any]]:
        """key -> record of the live sockets (the snapshot's own mapping when the stream closed none)."""
        if not self._closed:
            return self._sockets
        return {key: record for key, record in self._sockets.items() if key not in self._closed}

    def items(self) -> Iterable[tuple[str, list[Any]]]:
        return self.mapping().items()


def changed_keys(before: Mapping[str, list[Any]], after: Mapping[str, list[Any]]) -> tuple[list[str], list[str]]:
    """(closed, opened) keys between two socket mappings; a key whose endpoints changed is in both."""
    closed = [key for key in before if key not in after]
    opened = [key for key in after if key not in before]
    moved = [key for key, record in before.items()
             if (now := after.get(key)) is not None and now is not record
             and now[ENDPOINT_FIELDS] != record[ENDPOINT_FIELDS]]
    return closed + moved, opened + moved


def live_sockets(snapshot: Any) -> LiveSockets | None:
    """The live sockets of a snapshot (after a JSON round trip too); None when it is not a snapshot of ours."""
    if not isinstance(snapshot, Mapping) or snapshot.get("version") != SNAPSHOT_VERSION:
        return None
    sockets = snapshot.get("sockets")
    if not isinstance(sockets, Mapping):
        return None
    return LiveSockets(sockets, snapshot.get("closed") or ())


def record_from_destroyed(item: Destroyed, listeners: ListenerTable) -> tuple[str, list[Any]] | None:
    """A record for a socket known only from its destroy notification (no inode, no uid: the kernel gives 0)."""
    transport = TRANSPORT_OF.get(item.protocol)
    if transport is None or item.local_port == 0:
        return None
    record = new_record(transport, 4 if item.family == socket.AF_INET else 6, item.local_ip, item.local_port,
                        item.remote_ip, item.remote_port, inode=0, uid=None)
    record[R_DIRECTION] = listeners.direction(*_direction_inputs(record))
    return str(item.cookie), record


class SocketDataset:
    """The `socket` dataset: polls with sock_diag, reports existing/opened/closed sockets, and with the destroy
    stream also every socket that closes between polls."""

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)
        self.host_id = context.host_id
        self.options: SocketOptions = dataset_options(context, "socket")
        self.closed = ClosedCookies()
        self.observer = SocketObserver(self.hostfs, self.options, self.closed)
        self.users = AccountNames(self.hostfs)  # from <hostfs>/etc/passwd and /etc/group, not NSS
        self.boot_time = read_boot_time(self.hostfs)
        self._stream_warned = False
        self._traffic_warned = False

    # -- polling ------------------------------------------------------------------------------------------

    def observe(self) -> dict[str, Any]:
        """Dump the kernel's sockets now and return the snapshot (JSON-serialisable)."""
        return self.observer.observe()

    def state_report(self, current: Any) -> Sequence[Event]:
        """One `existing_socket` state event per socket of the snapshot; a TCP connection the last poll saw also
        carries what it has carried so far (the kernel's counters, read now), so a connection that lasts days
        shows its traffic before it closes."""
        sockets = live_sockets(current) or LiveSockets({}, ())
        context = self._context(current)
        timestamp = float(current.get("observed_at") or time.time())
        traffic = self._traffic_now()
        return [socket_event(record, key, EXISTING_SOCKET, context, timestamp, traffic.get(key))
                for key, record in sockets.items()]

    def _traffic_now(self) -> dict[str, Traffic]:
        try:
            return self.observer.traffic()
        except OSError as error:  # DumpError included: the report goes out without the counters
            if not self._traffic_warned:
                self._traffic_warned = True
                LOG.warning("Cannot read the TCP counters of the sockets (%s): state reports carry no bytes",
                            error.strerror or error)
            return {}

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """socket_closed for sockets of `previous` gone from `current`, then socket_opened for the new ones."""
        if previous is None:
            return []
        before, after = live_sockets(previous), live_sockets(current)
        if before is None or after is None:
            LOG.warning("Ignoring a previous socket snapshot of another format; no changes reported this time")
            return []
        if previous.get("boot_id") and previous.get("boot_id") != current.get("boot_id"):
            before = LiveSockets({f"boot:{key}": record for key, record in before.items()}, ())  # closed by reboot
        timestamp = float(current.get("observed_at") or time.time())
        closed_context, opened_context = self._context(previous), self._context(current)
        before_map, after_map = before.mapping(), after.mapping()
        closed, opened = changed_keys(before_map, after_map)
        events: list[Event] = []
        for key in closed:
            if key not in after_map:  # gone; not a socket that only changed endpoints (closed, then opened)
                self.closed.add(key)
            events.append(socket_event(before_map[key], key, SOCKET_CLOSED, closed_context, timestamp,
                                       closed_at=timestamp))
        for key in opened:
            events.append(socket_event(after_map[key], key, SOCKET_OPENED, opened_context, timestamp))
        return events

    # -- streaming ----------------------------------------------------------------------------------------

    def open_stream(self) -> DestroyListener | None:
        """Join the sock_diag destroy groups; None, after one warning, when the kernel or a sandbox refuses
        (EPERM where the groups need CAP_NET_ADMIN, EMFILE, no sock_diag, ...). Linux 6.x lets any user join."""
        try:
            return DestroyListener(destroy_groups(self.options.include_udp), self.options.stream_buffer_bytes,
                                   exclude_loopback=not self.options.include_localhost)
        except OSError as error:
            if not self._stream_warned:
                self._stream_warned = True
                hint = " (needs CAP_NET_ADMIN: run as root)" if denied(error) else ""
                LOG.warning("Cannot subscribe to socket destroy notifications (%s)%s: sockets that open and close "
                            "between two polls will not be reported", error.strerror or error, hint)
            return None

    def apply_stream(self, snapshot: Any, items: Sequence[Any]) -> tuple[Any, Sequence[Event]]:
        """Report each destroyed socket once as socket_closed (short-lived ones also as socket_opened) and mark
        it closed in the returned snapshot, so the next poll's diff does not report it again."""
        sockets = live_sockets(snapshot)
        listeners = ListenerTable(snapshot.get("listeners")) if sockets is not None else self.observer.listeners
        context = self._context(snapshot)
        events: list[Event] = []
        closed: list[str] = []
        for item in items:
            if not isinstance(item, Destroyed) or not self._wanted(item):
                continue
            key = str(item.cookie)
            if key in self.closed:
                continue
            self.closed.add(key, by_stream=True)
            record = sockets.get(key) if sockets is not None else None
            if record is not None:
                closed.append(key)
                events.append(socket_event(record, key, SOCKET_CLOSED, context, item.at,
                                           Traffic.from_destroyed(item), closed_at=item.at))
            else:
                events += self._short_lived(item, listeners, context)
        if not closed or sockets is None:
            return snapshot, events
        return {**snapshot, "closed": list(snapshot.get("closed") or []) + closed}, events

    def _wanted(self, item: Destroyed) -> bool:
        if item.protocol == socket.IPPROTO_UDP and not self.options.include_udp:
            return False
        return self.options.include_localhost or not (is_loopback(item.local_ip) or is_loopback(item.remote_ip))

    def _short_lived(self, item: Destroyed, listeners: ListenerTable, context: EventContext) -> list[Event]:
        made = record_from_destroyed(item, listeners)
        if made is None:
            return []
        key, record = made
        opened = socket_event(record, key, SOCKET_OPENED, context, item.at,
                              audit_extra={"short_lived": True, "synthesized": True}, error=SHORT_LIVED_ERROR)
        closed = socket_event(record, key, SOCKET_CLOSED, context, item.at, Traffic.from_destroyed(item),
                              closed_at=item.at, audit_extra={"short_lived": True}, error=SHORT_LIVED_ERROR)
        return [opened, closed]

    # -- helpers ------------------------------------------------------------------------------------------

    def _context(self, snapshot: Any) -> EventContext:
        processes = snapshot.get("processes", {}) if isinstance(snapshot, Mapping) else {}
        return EventContext(self.host_id, self.users, processes, self.boot_time)

    def close(self) -> None:
        self.observer.close()


def create(context: DatasetContext) -> SocketDataset:
    """Construct the socket dataset (the registry in actors.datasets calls this)."""
    return SocketDataset(context)
