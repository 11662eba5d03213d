"""Linux sock_diag over netlink: dump TCP/UDP sockets (inet_diag) and hear of their destruction, parsed with struct."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

LOG = logging.getLogger("hostaudit.sock_diag")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older request (struct inet_diag_req): TCP sockets of both families in one table walk
NLM_F_REQUEST = 0x001
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33  # SO_RCVBUF beyond net.core.rmem_max; needs CAP_NET_ADMIN
SO_ATTACH_FILTER = 26

# sock_diag multicast groups (include/uapi/linux/sock_diag.h, enum sknetlink_groups)
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET_UDP_DESTROY = 2
SKNLGRP_INET6_TCP_DESTROY = 3
SKNLGRP_INET6_UDP_DESTROY = 4

# inet_diag attributes (include/uapi/linux/inet_diag.h)
INET_DIAG_REQ_BYTECODE = 1  # a request's filter program (struct inet_diag_bc_op ...)
INET_DIAG_BC_S_COND = 7
INET_DIAG_BC_D_COND = 8
INET_DIAG_BC_JMP = 1
INET_DIAG_INFO = 2
INET_DIAG_PROTOCOL = 10
INET_DIAG_INFO_EXTENSION = 1 << (INET_DIAG_INFO - 1)  # idiag_ext bit asking a dump for each socket's tcp_info

# TCP states (include/net/tcp_states.h); UDP reuses ESTABLISHED (connected) and CLOSE (unconnected).
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12
TCP_STATE_NAMES = {
    TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT", TCP_SYN_RECV: "SYN_RECV", TCP_FIN_WAIT1: "FIN_WAIT1",
    TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT", TCP_CLOSE: "CLOSE", TCP_CLOSE_WAIT: "CLOSE_WAIT",
    TCP_LAST_ACK: "LAST_ACK", TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING", TCP_NEW_SYN_RECV: "NEW_SYN_RECV",
}
ALL_STATES = 0xFFF  # bit (1 << state) for states 0..11; a dump asks for the states it wants
# idiag_timer of a timewait minisocket (inet_twsk_diag_fill): what remains of a TCP socket the kernel has already
# destroyed (and announced to the destroy groups), dumped under its substate (TIME_WAIT, or FIN_WAIT2 when the
# socket was closed in FIN_WAIT2) with the destroyed socket's cookie. Full sockets report 0, 1, 2 or 4.
TIMEWAIT_TIMER = 3

# struct nlmsghdr; inet_diag_req_v2; inet_diag_msg (72 bytes, the 48-byte inet_diag_sockid kept raw)
_NLMSGHDR = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=IHHIIBBBxI48s")
_MESSAGE = struct.Struct("=IHHIIBBBB48sIIIII")  # nlmsghdr + inet_diag_msg
_LEGACY_REQUEST = struct.Struct("=IHHIIBBBB48sII")  # nlmsghdr + inet_diag_req (family, src/dst len, ext, id, states)
_MESSAGE_END = _NLMSGHDR.size + 72
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order); then if, cookie (host order)
_COOKIE = struct.Struct("=II")
_ATTR = struct.Struct("=HH")
_BC_OP = struct.Struct("=BBH")  # struct inet_diag_bc_op: code, yes, no (byte offsets to jump by)
_HOSTCOND = struct.Struct("=BBxxi")  # struct inet_diag_hostcond: family, prefix_len, port (-1: any); the address
_ERRNO = struct.Struct("=i")
# struct tcp_info: tcpi_bytes_acked, tcpi_bytes_received (u64 at 120, 128); tcpi_segs_out, tcpi_segs_in (u32)
_TCP_INFO_COUNTERS = struct.Struct("=QQII")
_TCP_INFO_COUNTERS_OFFSET = 120

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_RECV_SIZE = 1 << 16
_sequence = itertools.count(1)


class Endpoints(NamedTuple):
    """The decoded inet_diag_sockid: ports, addresses as text (IPv4-mapped IPv6 as IPv4), interface, cookie."""

    local_port: int
    remote_port: int
    local_ip: str
    remote_ip: str
    interface: int
    cookie: int


def format_ip(family: int, raw: bytes) -> str:
    """Return the text form of a 16-byte inet_diag address; IPv4-mapped IPv6 (::ffff:a.b.c.d) is shown as IPv4,
    as Go's net.IP prints it."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


def decode_sockid(family: int, sockid: bytes) -> Endpoints:
    """Decode the 48 raw bytes of an inet_diag_sockid (as a dump or a destroy notification gives them)."""
    sport, dport, src, dst = _SOCKID.unpack_from(sockid)
    interface, cookie_low, cookie_high = struct.unpack_from("=III", sockid, 36)
    return Endpoints(sport, dport, format_ip(family, src), format_ip(family, dst), interface,
                     cookie_low | cookie_high << 32)


def sockid_ports(sockid: bytes) -> tuple[int, int]:
    """Return (local port, remote port) of a raw inet_diag_sockid without decoding the rest."""
    return struct.unpack_from(">HH", sockid)


def dump_request(family: int, protocol: int, states: int, sequence: int, extensions: int = 0,
                 bytecode: bytes = b"") -> bytes:
    """Return a SOCK_DIAG_BY_FAMILY dump request (nlmsghdr + inet_diag_req_v2) for one family and protocol, with
    `bytecode` (a filter the kernel runs on each socket, see not_loopback_bytecode) as INET_DIAG_REQ_BYTECODE.

    For TCP and AF_UNSPEC, the older TCPDIAG_GETSOCK request instead: the kernel answers it with the TCP sockets
    of both families from one walk of its tables, where two SOCK_DIAG_BY_FAMILY dumps walk them twice (the walk
    of every hash bucket, not the sockets, is most of an idle dump's cost)."""
    attribute = _ATTR.pack(_ATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode if bytecode else b""
    if family == socket.AF_UNSPEC and protocol == socket.IPPROTO_TCP:
        return _LEGACY_REQUEST.pack(_LEGACY_REQUEST.size + len(attribute), TCPDIAG_GETSOCK,
                                    NLM_F_REQUEST | NLM_F_DUMP, sequence, 0, family, 0, 0, extensions,
                                    b"\x00" * 48, states, 0) + attribute
    return _REQUEST.pack(_REQUEST.size + len(attribute), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                         sequence, 0, family, protocol, extensions, states, b"\x00" * 48) + attribute


# Loopback, as hostaudit reports it (actors.datasets.socket.dataset.is_loopback): 127.0.0.0/8 (also IPv4-mapped
# in IPv6: the kernel matches an AF_INET condition against ::ffff:a.b.c.d) and ::1.
_LOOPBACK_CONDITIONS = ((socket.AF_INET, 8, socket.inet_pton(socket.AF_INET, "127.0.0.0")),
                        (socket.AF_INET6, 128, socket.inet_pton(socket.AF_INET6, "::1")))


def not_loopback_bytecode() -> bytes:
    """An inet_diag filter program keeping only the sockets whose local and remote addresses are both not loopback.

    Each condition (struct inet_diag_bc_op + inet_diag_hostcond, any port) goes on to the next op when it
    matches: a JMP past the end, which rejects the socket; otherwise it skips that JMP. The kernel's audit
    (inet_diag_bc_audit) wants every jump target on the chain of `yes` jumps, which this layout keeps.
    """
    hostconds = [_HOSTCOND.pack(family, prefix, -1) + address for family, prefix, address in _LOOPBACK_CONDITIONS]
    conditions = [(code, hostcond) for code in (INET_DIAG_BC_S_COND, INET_DIAG_BC_D_COND) for hostcond in hostconds]
    total = sum(2 * _BC_OP.size + len(hostcond) for _, hostcond in conditions)
    program = b""
    for code, hostcond in conditions:
        size = _BC_OP.size + len(hostcond)
        program += _BC_OP.pack(code, size, size + _BC_OP.size) + hostcond  # yes: the JMP; no: past it
        program += _BC_OP.pack(INET_DIAG_BC_JMP, _BC_OP.size, total - len(program) + 4)  # past the end: reject
    return program


class DiagEntry(NamedTuple):
    """One socket of a dump, kept raw: its sockid bytes (identity: addresses, ports, cookie) and a few fields.

    `uid` is the owner of the socket's file (idiag_uid): real only while a process holds the socket (`inode` not
    0); the kernel reports 0 for an orphan, whoever owned it."""

    sockid: bytes
    family: int
    state: int
    uid: int
    inode: int


class DumpError(OSError):
    """The kernel refused or aborted a sock_diag dump (NLMSG_ERROR)."""


# The traffic counters of a TCP socket: tcpi_bytes_acked, tcpi_bytes_received, tcpi_segs_out, tcpi_segs_in.
TcpCounters = tuple[int, int, int, int]


def parse_dump(data: bytes, sequence: int, into: list[DiagEntry],
               counters: dict[bytes, TcpCounters] | None = None) -> bool:
    """Append the inet_diag_msg entries of one netlink datagram to `into`; return True at NLMSG_DONE. With
    `counters` (a dump that asked for INET_DIAG_INFO), also map each TCP socket's raw sockid to its counters.

    Messages of another sequence number (a stale dump) are skipped, and so are timewait minisockets (the remains
    of sockets already destroyed, see TIMEWAIT_TIMER). Raises DumpError on NLMSG_ERROR.
    """
    offset, end = 0, len(data)
    unpack = _MESSAGE.unpack_from
    append = into.append
    make = tuple.__new__  # DiagEntry(...) runs a Python-level __new__: 3x slower, and a dump may hold 100,000
    while offset + _NLMSGHDR.size <= end:
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise DumpError(errno.EBADMSG, f"truncated netlink message (length {length})")
        if seq == sequence:
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                code = -_ERRNO.unpack_from(data, offset + _NLMSGHDR.size)[0]
                raise DumpError(code, f"sock_diag dump failed: {os.strerror(code)}")
            if (kind == SOCK_DIAG_BY_FAMILY or kind == TCPDIAG_GETSOCK) and offset + _MESSAGE_END <= end:
                fields = unpack(data, offset)
                if fields[7] != TIMEWAIT_TIMER:
                    append(make(DiagEntry, (fields[9], fields[5], fields[6], fields[13], fields[14])))
                    if counters is not None:
                        info = _attributes(data, offset + _MESSAGE_END, offset + min(length, end - offset)).get(
                            INET_DIAG_INFO)
                        if info and (found := parse_tcp_info(info)) is not None:
                            counters[fields[9]] = found
        offset += (length + 3) & ~3
    return False


# Classic BPF (linux/filter.h): the instructions a destroy subscription's filter is made of, and where a destroy
# notification (one nlmsghdr + inet_diag_msg per datagram) keeps the family and the two addresses.
_BPF_LD_B, _BPF_LD_W, _BPF_AND, _BPF_JEQ, _BPF_RET = 0x30, 0x20, 0x54, 0x15, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_MSG_FAMILY, _MSG_SOURCE, _MSG_DESTINATION = 16, 24, 40
_IPV4_NET = 0xFF000000
_IPV4_LOOPBACK = 0x7F000000  # 127.0.0.0/8
BpfProgram = list[str | tuple[int, int] | tuple[int, int, str | None, str | None]]


def assemble(program: BpfProgram) -> bytes:
    """Classic BPF bytes of `program`: labels (str) and instructions (code, k[, jump if true, jump if false]),
    each jump a label or None to go on to the next instruction."""
    instructions = [item for item in program if not isinstance(item, str)]
    labels: dict[str, int] = {}
    for item in program:
        if isinstance(item, str):
            labels[item] = sum(1 for before in program[:program.index(item)] if not isinstance(before, str))
    code = b""
    for index, (kind, k, *jumps) in enumerate(instructions):
        true, false = (jumps + [None, None])[:2]
        code += _SOCK_FILTER.pack(kind, 0 if true is None else labels[true] - index - 1,
                                  0 if false is None else labels[false] - index - 1, k)
    return code


def not_loopback_socket_filter() -> bytes:
    """A classic BPF program for the destroy subscription: the kernel drops a notification whose local or
    remote address is loopback (127.0.0.0/8, also IPv4-mapped, or ::1) before it is queued."""
    program: BpfProgram = [(_BPF_LD_B, _MSG_FAMILY), (_BPF_JEQ, socket.AF_INET, "ipv4", None),
                           (_BPF_JEQ, socket.AF_INET6, "ipv6", "keep"), "ipv4"]
    for at in (_MSG_SOURCE, _MSG_DESTINATION):
        program += [(_BPF_LD_W, at), (_BPF_AND, _IPV4_NET), (_BPF_JEQ, _IPV4_LOOPBACK, "drop", None)]
    program += [(_BPF_RET, 0xFFFFFFFF), "ipv6"]
    for at in (_MSG_SOURCE, _MSG_DESTINATION):
        done, one, mapped = f"done{at}", f"one{at}", f"mapped{at}"
        program += [(_BPF_LD_W, at), (_BPF_JEQ, 0, None, done), (_BPF_LD_W, at + 4), (_BPF_JEQ, 0, None, done),
                    (_BPF_LD_W, at + 8), (_BPF_JEQ, 0, one, None), (_BPF_JEQ, 0xFFFF, mapped, done),
                    one, (_BPF_LD_W, at + 12), (_BPF_JEQ, 1, "drop", done),
                    mapped, (_BPF_LD_W, at + 12), (_BPF_AND, _IPV4_NET), (_BPF_JEQ, _IPV4_LOOPBACK, "drop", done),
                    done]
    return assemble([*program, "keep", (_BPF_RET, 0xFFFFFFFF), "drop", (_BPF_RET, 0)])


def attach_filter(sock: socket.socket, code: bytes) -> None:
    """Attach a classic BPF program (SO_ATTACH_FILTER: the kernel copies it) to `sock`."""
    import ctypes  # only here: a pointer to the program is what struct sock_fprog holds

    buffer = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HP", len(code) // _SOCK_FILTER.size, ctypes.addressof(buffer)))


class DiagSocket:
    """A netlink NETLINK_SOCK_DIAG socket for dumps; one dump at a time, reused across polls. With
    `exclude_loopback`, the kernel leaves loopback sockets out of every dump (see not_loopback_bytecode)."""

    def __init__(self, exclude_loopback: bool = False) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self._socket.bind((0, 0))
        self._bytecode = not_loopback_bytecode() if exclude_loopback else b""

    def dump(self, family: int, protocol: int, states: int = ALL_STATES,
             counters: dict[bytes, TcpCounters] | None = None) -> list[DiagEntry]:
        """Return every socket of `family` (AF_INET or AF_INET6; AF_UNSPEC for both, TCP only) and `protocol`
        (IPPROTO_TCP/UDP) in `states`;
        with `counters`, also ask for each TCP socket's tcp_info and put its counters there (by raw sockid)."""
        sequence = next(_sequence) & 0xFFFFFFFF
        extensions = INET_DIAG_INFO_EXTENSION if counters is not None else 0
        self._socket.send(dump_request(family, protocol, states, sequence, extensions, self._bytecode))
        entries: list[DiagEntry] = []
        while not parse_dump(self._socket.recv(_RECV_SIZE), sequence, entries, counters):
            pass
        return entries

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "DiagSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Destroyed:
    """A socket the kernel destroyed (a sock_diag destroy notification), with its last TCP counters.

    The kernel gives no uid and no inode at destruction: inet_diag_handler_get_info zeroes the inet_diag_msg and
    fills only who it was (addresses, ports, cookie, state) and, for TCP, its tcp_info; idiag_uid is 0 for every
    socket, whoever owned it, so it is not parsed (it would make every short-lived socket root's).
    `at` is when the notification was read (epoch seconds).
    """

    family: int
    protocol: int
    state: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    cookie: int
    at: float
    bytes_acked: int | None = None  # tcpi_bytes_acked: bytes sent by this side and acknowledged
    bytes_received: int | None = None  # tcpi_bytes_received
    segments_out: int | None = None  # tcpi_segs_out
    segments_in: int | None = None  # tcpi_segs_in


def parse_tcp_info(payload: bytes) -> TcpCounters | None:
    """Return (bytes_acked, bytes_received, segs_out, segs_in) of a struct tcp_info, None if too short (old kernel)."""
    if len(payload) < _TCP_INFO_COUNTERS_OFFSET + _TCP_INFO_COUNTERS.size:
        return None
    return _TCP_INFO_COUNTERS.unpack_from(payload, _TCP_INFO_COUNTERS_OFFSET)


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Return the netlink attributes (type -> payload) between `start` and `end`."""
    attributes: dict[int, bytes] = {}
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size:
            break
        attributes[kind & 0x3FFF] = data[start + _ATTR.size:start + length]
        start += (length + 3) & ~3
    return attributes


def parse_destroyed(data: bytes, at: float) -> list[Destroyed]:
    """Parse one datagram of the destroy groups into Destroyed records (other message types are skipped)."""
    destroyed: list[Destroyed] = []
    offset, end = 0, len(data)
    while offset + _MESSAGE_END <= end:
        fields = _MESSAGE.unpack_from(data, offset)
        length, kind, family = fields[0], fields[1], fields[5]
        if length < _NLMSGHDR.size:
            break
        if kind == SOCK_DIAG_BY_FAMILY and family in (socket.AF_INET, socket.AF_INET6):
            attributes = _attributes(data, offset + _MESSAGE_END, offset + min(length, end - offset))
            protocol_raw = attributes.get(INET_DIAG_PROTOCOL)
            info = attributes.get(INET_DIAG_INFO)
            protocol = protocol_raw[0] if protocol_raw else (socket.IPPROTO_TCP if info else socket.IPPROTO_UDP)
            counters = parse_tcp_info(info) if info and protocol == socket.IPPROTO_TCP else None
            endpoints = decode_sockid(family, fields[9])
            destroyed.append(Destroyed(
                family=family, protocol=protocol, state=fields[6],
                local_ip=endpoints.local_ip, local_port=endpoints.local_port,
                remote_ip=endpoints.remote_ip, remote_port=endpoints.remote_port,
                cookie=endpoints.cookie, at=at, **_counter_fields(counters),
            ))
        offset += (length + 3) & ~3
    return destroyed


def _counter_fields(counters: tuple[int, int, int, int] | None) -> dict[str, int | None]:
    if counters is None:
        return {}
    acked, received, segments_out, segments_in = counters
    return {"bytes_acked": acked, "bytes_received": received, "segments_out": segments_out,
            "segments_in": segments_in}


def destroy_groups(include_udp: bool) -> tuple[int, ...]:
    """The destroy multicast groups to join: TCP over IPv4 and IPv6, and UDP too when asked."""
    groups = (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY)
    return groups + ((SKNLGRP_INET_UDP_DESTROY, SKNLGRP_INET6_UDP_DESTROY) if include_udp else ())


class DestroyListener:
    """A subscription to the sock_diag destroy groups: every socket the kernel frees, as Destroyed records.

    Linux 6.x lets any user join the groups (sock_diag sets NL_CFG_F_NONROOT_RECV); a kernel or sandbox that
    refuses raises OSError here (PermissionError for EPERM). The receive buffer is made large
    (SO_RCVBUFFORCE as root) so bursts wait in the kernel; what the kernel still drops is counted by lost().
    With `exclude_loopback`, the kernel drops the notifications of loopback sockets (not_loopback_socket_filter)
    before queueing them: they neither wake the reader nor take buffer room.
    """

    MAX_BATCH = 4096
    DROPS_READ_SECONDS = 1.0

    def __init__(self, groups: tuple[int, ...], receive_buffer: int, exclude_loopback: bool = False) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            if exclude_loopback:  # before joining: no loopback notification is ever queued
                self._exclude_loopback()
            self._socket.bind((0, 0))
            for group in groups:
                self._socket.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            self._set_receive_buffer(receive_buffer)
            self._socket.setblocking(False)
        except OSError:
            self._socket.close()
            raise
        self._inode = os.fstat(self._socket.fileno()).st_ino
        self._overruns = 0  # ENOBUFS seen: the kernel dropped at least one notification each time
        self._drops = 0  # sk_drops when /proc/net/netlink was last read
        self._drops_read_at = float("-inf")
        self._closed = False

    def _exclude_loopback(self) -> None:
        try:
            attach_filter(self._socket, not_loopback_socket_filter())
        except OSError as error:  # no socket filters here: the dataset drops loopback sockets itself
            LOG.warning("Cannot filter loopback sockets out of the destroy notifications in the kernel (%s)",
                        error.strerror or error)

    def _set_receive_buffer(self, size: int) -> None:
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def read(self, timeout: float) -> list[Destroyed]:
        """Wait up to `timeout` seconds for notifications; return those queued (at most MAX_BATCH), [] on timeout."""
        if self._closed:
            return []
        try:
            ready, _, _ = select.select([self._socket], [], [], max(0.0, timeout))
        except (OSError, ValueError):  # closed by another thread while we waited
            return []
        if not ready:
            return []
        return self._drain()

    def _drain(self) -> list[Destroyed]:
        batch: list[Destroyed] = []
        while len(batch) < self.MAX_BATCH and not self._closed:
            try:
                data = self._socket.recv(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                self._overruns += 1
                continue
            batch.extend(parse_destroyed(data, time.time()))
        return batch

    def lost(self) -> int:
        """Notifications the kernel dropped for want of buffer: its exact count (sk_drops in /proc/net/netlink)
        when readable, else the number of ENOBUFS errors seen (each stands for one or more drops). The table is
        read at most every DROPS_READ_SECONDS: the runtime asks after every 50 ms batch window, and reading it
        20 times a second was most of an idle socket collector's work."""
        now = time.monotonic()
        if now >= self._drops_read_at + self.DROPS_READ_SECONDS:
            self._drops_read_at, self._drops = now, netlink_drops(self._inode) or 0
        return max(self._overruns, self._drops)

    def receive_buffer(self) -> int:
        """The socket's receive buffer as the kernel accounts it (twice what was asked, as socket(7) says)."""
        return self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._closed = True
        self._socket.close()


def netlink_drops(inode: int, table: Path = Path("/proc/net/netlink")) -> int | None:
    """Return the Drops column of /proc/net/netlink for the netlink socket with `inode`, None if not found."""
    try:
        lines = table.read_text().splitlines()
    except OSError:
        return None
    for line in lines[1:]:
        columns = line.split()
        if len(columns) >= 10 and columns[9] == str(inode):
            return int(columns[8])
    return None
