"""Tests of the socket dataset against the real kernel: loopback sockets, sock_diag dumps and the destroy stream."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from actors.datasets import DatasetContext
from actors.datasets.socket.dataset import (
    R_INODE, R_LOCAL_PORT, R_PROCESS, R_REMOTE_PORT, R_STATE, R_TRANSPORT, R_UID, SocketDataset,
)
from actors.datasets.socket.options import DEFAULT_STREAM_BUFFER
from actors.ecs import assert_ecs
from tests.sample_support import EVENT_FIELDS
from actors.hostfs.entity import process_entity_id, process_start_iso
from actors.event import Event
from actors.datasets.socket.sock_diag import (
    ALL_STATES, NETLINK_ADD_MEMBERSHIP, NETLINK_SOCK_DIAG, SKNLGRP_INET_TCP_DESTROY, SOCK_DIAG_BY_FAMILY,
    SOL_NETLINK, TCP_FIN_WAIT2, DestroyListener, Destroyed, DiagSocket, DumpError, decode_sockid, destroy_groups,
)
from tests.agent_harness import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: /proc/*/fd of other users, destroy groups")

NOBODY = 65534
DEADLINE = 10.0


def machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


HOST_ID = machine_id()


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


LOOPBACKS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not ipv6_loopback_works(),
                                                                          reason="no IPv6 loopback"))]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """The harness's wait_for, with this module's argument order and default deadline."""
    return wait_for(condition, timeout, what)


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Closes every socket, stream and dataset and stops every child a test registers, whatever happens."""
    with contextlib.ExitStack() as stack:
        yield stack


def make_dataset(cleanup: contextlib.ExitStack, hostfs: Path = Path("/"), **options: Any) -> SocketDataset:
    dataset = SocketDataset(DatasetContext(hostfs=hostfs, options=options, host_id=HOST_ID))
    cleanup.callback(dataset.close)
    return dataset


def open_stream(cleanup: contextlib.ExitStack, dataset: SocketDataset) -> DestroyListener:
    stream = dataset.open_stream()
    assert stream is not None, "the destroy stream needs CAP_NET_ADMIN"
    cleanup.callback(stream.close)
    return stream


def listen(cleanup: contextlib.ExitStack, ip: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> socket.socket:
    listener = cleanup.enter_context(socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind))
    listener.bind((ip, 0))
    if kind == socket.SOCK_STREAM:
        listener.listen(1024)
    return listener


def connect(cleanup: contextlib.ExitStack, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """Return (client, accepted server side) of a new connection to `listener`."""
    address = listener.getsockname()
    client = cleanup.enter_context(socket.create_connection(address[:2]))
    server, _ = listener.accept()
    cleanup.enter_context(server)
    return client, server


def port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def find(snapshot: dict[str, Any], local_port: int, remote_port: int | None = None,
         transport: str = "tcp") -> tuple[str, list[Any]] | None:
    """The (cookie, record) of the snapshot's socket with these ports, None if absent."""
    for key, record in snapshot["sockets"].items():
        if (record[R_TRANSPORT], record[R_LOCAL_PORT]) == (transport, local_port) and (
                remote_port is None or record[R_REMOTE_PORT] == remote_port):
            return key, record
    return None


def events_for(events: Sequence[Event], cookie: str) -> list[Event]:
    return [event for event in events if event.fields["system"]["audit"]["socket"]["cookie"] == cookie]


def state_event(dataset: SocketDataset, snapshot: dict[str, Any], cookie: str) -> Event:
    [event] = events_for(dataset.state_report({**snapshot, "sockets": {cookie: snapshot["sockets"][cookie]}}),
                         cookie)
    return event


def checked(events: Sequence[Event]) -> Sequence[Event]:
    for event in events:
        assert_ecs(event.stamped(1).to_document({}), EVENT_FIELDS)
    return events


def without_unknowns(events: Sequence[Event]) -> Sequence[Event]:
    """Checks that no event says -1 or an empty name for what it does not know: it leaves it out."""
    for event in events:
        assert "-1" not in event.message and "  " not in event.message and " ()" not in event.message, event.message
        process, user = event.fields.get("process"), event.fields.get("user")
        assert process is None or (process["pid"] > 0 and process.get("name") != ""), process
        assert user is None or (user["id"].isdigit() and user.get("name") != ""), user
    return events


def boot_time() -> int:
    [line] = [line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")]
    return int(line.split()[1])


def process_of(pid: int) -> dict[str, Any]:
    """What the dataset should say of a live process: from its /proc files, read here."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat[stat.rfind(")") + 2:].split()[19])
    return {"pid": pid, "name": Path(f"/proc/{pid}/comm").read_text().strip(),
            "executable": os.readlink(f"/proc/{pid}/exe"),
            "args": Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0"),
            "start": process_start_iso(boot_time(), start_ticks),
            "parent": {"pid": int(stat[stat.rfind(")") + 2:].split()[1])},
            "entity_id": process_entity_id(HOST_ID, pid, start_ticks)}


def own_process() -> dict[str, Any]:
    """What the dataset should say of this test process."""
    return process_of(os.getpid())


def read_stream(stream: DestroyListener, done: Callable[[list[Destroyed]], bool], what: str) -> list[Destroyed]:
    """Read the destroy stream until `done(everything read)` holds, within the deadline."""
    received: list[Destroyed] = []
    deadline = time.monotonic() + DEADLINE
    while not done(received):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what} ({len(received)} notifications read)")
        received += stream.read(0.2)
    return received


# Children run the interpreter with the standard library only; they import first, then drop to nobody.
DROP_TO_NOBODY = f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})"


def spawn(cleanup: contextlib.ExitStack, code: str, *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd="/")

    def stop() -> None:
        if child.poll() is None:
            child.kill()
        child.communicate()
    cleanup.callback(stop)
    return child


# --------------------------------------------------------------------------------------------------------
# Enumeration, direction, addresses, process, user
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ip", LOOPBACKS)
def test_listener_inbound_and_outbound_sockets_are_described(cleanup: contextlib.ExitStack, ip: str) -> None:
    dataset = make_dataset(cleanup, include_localhost=True)
    listener = listen(cleanup, ip)
    first = dataset.observe()
    client, _server = connect(cleanup, listener)
    current = dataset.observe()
    opened = checked(dataset.diff(first, current, at_startup=False))

    listening_key, _ = find(current, port(listener), 0)
    outbound_key, _ = find(current, port(client), port(listener))
    inbound_key, _ = find(current, port(listener), port(client))
    listening = state_event(dataset, current, listening_key)
    [outbound] = events_for(opened, outbound_key)
    [inbound] = events_for(opened, inbound_key)
    me = own_process()
    network_type = "ipv6" if ":" in ip else "ipv4"

    assert listening.fields["network"] == {"direction": "listening", "transport": "tcp", "type": network_type,
                                           "iana_number": "6"}
    assert listening.fields["destination"] == {"ip": ip, "port": port(listener)}
    assert outbound.action == inbound.action == "socket_opened"
    assert outbound.fields["network"]["direction"] == "outbound"
    assert outbound.fields["source"] == {"ip": ip, "port": port(client)}
    assert outbound.fields["destination"] == {"ip": ip, "port": port(listener)}
    assert (outbound.fields["client"], outbound.fields["server"]) == (outbound.fields["source"],
                                                                      outbound.fields["destination"])
    assert (inbound.fields["client"], inbound.fields["server"]) == (outbound.fields["client"],
                                                                    outbound.fields["server"])
    assert listening.fields["server"] == listening.fields["destination"] and "client" not in listening.fields
    assert inbound.fields["network"]["direction"] == "inbound"
    assert inbound.fields["source"] == {"ip": ip, "port": port(client)}
    assert inbound.fields["destination"] == {"ip": ip, "port": port(listener)}
    assert inbound.fields["network"]["community_id"] == outbound.fields["network"]["community_id"]
    for event in (listening, outbound, inbound):
        assert event.fields["process"] == me
        assert event.fields["user"] == {"id": "0", "name": "root"}
        assert event.fields["group"] == {"id": str(os.getgid()), "name": "root"}
        assert event.fields["system"]["audit"]["socket"]["entity_id"]
    bracket = (lambda address: f"[{address}]") if ":" in ip else (lambda address: address)
    assert inbound.message == (f"Inbound socket ({bracket(ip)}:{port(client)} -> {bracket(ip)}:{port(listener)}) "
                               f"OPENED by process {me['name']} (PID: {me['pid']}) and user root (UID: 0)")


def test_include_localhost_decides_whether_loopback_sockets_are_reported(cleanup: contextlib.ExitStack) -> None:
    listener = listen(cleanup)
    client, _server = connect(cleanup, listener)
    without = make_dataset(cleanup).observe()
    with_loopback = make_dataset(cleanup, include_localhost=True).observe()

    assert find(without, port(listener)) is None and find(without, port(client)) is None
    assert find(with_loopback, port(listener), 0) and find(with_loopback, port(client), port(listener))
    assert not any(record[2].startswith("127.") or record[4].startswith("127.") or "::1" in (record[2], record[4])
                   for record in without["sockets"].values())
    # the kernel left it out of the dump: a listener on loopback could only make a loopback connection inbound
    assert str(port(listener)) not in without.get("listeners", {}).get("tcp", {})
    assert str(port(listener)) in with_loopback["listeners"]["tcp"]


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback")
def test_one_tcp_dump_of_both_families_is_the_two_dumps_of_one_family_each(cleanup: contextlib.ExitStack) -> None:
    listeners = [listen(cleanup, "127.0.0.1"), listen(cleanup, "::1")]
    for listener in listeners:
        connect(cleanup, listener)
    diag = DiagSocket()
    cleanup.callback(diag.close)
    for attempt in range(5):  # the host's other sockets may change between the dumps: retry until they agree
        both = diag.dump(socket.AF_UNSPEC, socket.IPPROTO_TCP, ALL_STATES)
        each = [entry for family in (socket.AF_INET, socket.AF_INET6)
                for entry in diag.dump(family, socket.IPPROTO_TCP, ALL_STATES)]
        if sorted(both) == sorted(each):
            break
    assert sorted(both) == sorted(each)
    assert {entry.family for entry in both} == {socket.AF_INET, socket.AF_INET6}
    ours = {decode_sockid(entry.family, entry.sockid).local_port for entry in both}
    assert {port(listener) for listener in listeners} <= ours


def test_a_kernel_refusing_the_dump_of_both_families_gets_one_per_family(
        cleanup: contextlib.ExitStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    listener = listen(cleanup, "127.0.0.1")
    client, _ = connect(cleanup, listener)
    real_dump = DiagSocket.dump

    def refusing(self: DiagSocket, family: int, *args: Any) -> Any:
        if family == socket.AF_UNSPEC:  # as a kernel without the older TCPDIAG_GETSOCK request answers
            raise DumpError(22, "sock_diag dump failed: Invalid argument")
        return real_dump(self, family, *args)

    monkeypatch.setattr(DiagSocket, "dump", refusing)
    dataset = make_dataset(cleanup, include_localhost=True)
    with caplog.at_level("INFO", logger="hostaudit.socket"):
        first, second = dataset.observe(), dataset.observe()
    assert find(second, port(client), port(listener)) and find(first, port(listener), 0)
    assert [record.getMessage() for record in caplog.records if "both families" in record.getMessage()] == [
        "The kernel does not dump TCP sockets of both families at once (sock_diag dump failed: Invalid argument): "
        "one dump per family"]


def host_address() -> str | None:
    """An IPv4 address of this host that is not loopback, None without one."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@pytest.mark.skipif(host_address() is None, reason="no IPv4 address besides loopback")
@pytest.mark.parametrize("include_localhost", [False, True])
def test_loopback_sockets_cost_nothing_unless_reported(cleanup: contextlib.ExitStack,
                                                       include_localhost: bool) -> None:
    """Without include_localhost the kernel leaves loopback sockets out of the dumps and drops their destroy
    notifications before queueing them (the stream thread does not even wake); the host's own address is kept."""
    dataset = make_dataset(cleanup, include_localhost=include_localhost)
    stream = open_stream(cleanup, dataset)
    loopback, host = listen(cleanup), listen(cleanup, host_address() or "")
    connections = [connect(cleanup, loopback), connect(cleanup, host)]
    snapshot = dataset.observe()

    assert find(snapshot, port(host), 0) and find(snapshot, port(connections[1][0]), port(host))
    assert bool(find(snapshot, port(connections[0][0]), port(loopback))) is include_localhost
    host_client = port(connections[1][0])
    for client, server in connections:
        client.close()
        server.close()
    closed = read_stream(stream, lambda items: host_client in {item.local_port for item in items},
                         "the host connection's close")
    time.sleep(0.2)  # a loopback notification would be queued by now
    closed += stream.read(0.2)
    assert any(item.local_ip.startswith("127.") for item in closed) is include_localhost


def test_udp_sockets_are_reported_only_with_include_udp(cleanup: contextlib.ExitStack) -> None:
    server = listen(cleanup, kind=socket.SOCK_DGRAM)
    client = cleanup.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.connect(server.getsockname())
    tcp_only = make_dataset(cleanup, include_localhost=True)
    with_udp = make_dataset(cleanup, include_localhost=True, include_udp=True)
    stream = open_stream(cleanup, with_udp)
    snapshot = with_udp.observe()

    assert find(tcp_only.observe(), port(server), transport="udp") is None
    server_key, _ = find(snapshot, port(server), 0, transport="udp")
    client_key, _ = find(snapshot, port(client), port(server), transport="udp")
    events = checked(with_udp.state_report(snapshot))
    assert events_for(events, server_key)[0].fields["network"]["direction"] == "listening"
    [outbound] = events_for(events, client_key)
    assert outbound.fields["network"]["transport"] == "udp" and outbound.fields["network"]["direction"] == "outbound"
    assert outbound.fields["process"]["pid"] == os.getpid()

    client.close()
    received = read_stream(stream, lambda items: client_key in {str(item.cookie) for item in items},
                           "the UDP socket's destroy notification")
    _, closed = with_udp.apply_stream(snapshot, received)
    [udp_closed] = events_for(checked(closed), client_key)
    assert udp_closed.action == "socket_closed" and udp_closed.fields["process"]["pid"] == os.getpid()


def test_socket_of_another_user_has_their_uid_name_and_process(cleanup: contextlib.ExitStack) -> None:
    child = spawn(cleanup, f"""
        import os, socket, sys
        {DROP_TO_NOBODY}
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        print(listener.getsockname()[1], flush=True)
        sys.stdin.readline()
    """)
    listening_port = int(child.stdout.readline())
    dataset = make_dataset(cleanup, include_localhost=True)
    snapshot = dataset.observe()
    key, _ = find(snapshot, listening_port, 0)
    event = checked([state_event(dataset, snapshot, key)])[0]

    assert event.fields["user"] == {"id": str(NOBODY), "name": "nobody"}
    assert event.fields["process"]["pid"] == child.pid
    assert event.fields["process"]["name"] == Path(f"/proc/{child.pid}/comm").read_text().strip()
    assert event.message.endswith(f"(PID: {child.pid}) and user nobody (UID: {NOBODY})")


def test_user_names_come_from_the_hostfs_passwd(cleanup: contextlib.ExitStack, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("superuser:x:0:0::/root:/bin/sh\n")
    (tmp_path / "proc").symlink_to("/proc")
    listener = listen(cleanup)
    dataset = make_dataset(cleanup, hostfs=tmp_path, include_localhost=True)
    snapshot = dataset.observe()
    key, _ = find(snapshot, port(listener), 0)
    event = state_event(dataset, snapshot, key)

    assert event.fields["user"] == {"id": "0", "name": "superuser"}
    assert event.fields["process"]["pid"] == os.getpid()


# --------------------------------------------------------------------------------------------------------
# Sockets whose process exited
# --------------------------------------------------------------------------------------------------------

# TCP_LINGER2 past the 60 s of TIME_WAIT keeps a socket closed in FIN_WAIT2 a full (orphaned) socket; with the
# default, the kernel destroys it at once and leaves a timewait minisocket, which is not a socket any more.
ORPHAN_MAKER = f"""
    import os, socket, sys
    {DROP_TO_NOBODY}
    client = socket.socket()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2, 120)
    client.connect(("127.0.0.1", int(sys.argv[1])))
    print(client.getsockname()[1], flush=True)
    sys.stdin.readline()
"""


def orphan_in_fin_wait2(dataset: SocketDataset, child_port: int) -> dict[str, Any] | None:
    snapshot = dataset.observe()
    found = find(snapshot, child_port)
    return snapshot if found and found[1][R_STATE] == TCP_FIN_WAIT2 else None


def test_socket_left_by_an_exited_process_keeps_its_uid_only(cleanup: contextlib.ExitStack) -> None:
    listener = listen(cleanup)
    watcher = make_dataset(cleanup, include_localhost=True)  # sees the child's socket while the child lives
    child = spawn(cleanup, ORPHAN_MAKER, str(port(listener)))
    child_port = int(child.stdout.readline())
    server, _ = listener.accept()
    cleanup.enter_context(server)
    alive = watcher.observe()
    key, record = find(alive, child_port)
    assert alive["processes"][record[R_PROCESS]][0] == child.pid

    child.communicate("exit\n", timeout=DEADLINE)  # the child exits; its socket lingers in FIN_WAIT2, inode 0
    orphaned = wait_until(lambda: orphan_in_fin_wait2(watcher, child_port), "the orphan in FIN_WAIT2")
    newcomer = make_dataset(cleanup, include_localhost=True)  # first sees the socket after its process exited
    first_seen = wait_until(lambda: orphan_in_fin_wait2(newcomer, child_port), "the orphan, seen afresh")
    [late] = checked([state_event(newcomer, first_seen, key)])
    [carried] = checked([state_event(watcher, orphaned, key)])

    assert late.fields["error"]["message"] == "process has exited (inode=0)"
    # the kernel reports uid 0 for any socket without an inode: not taken for root
    assert "process" not in late.fields and "user" not in late.fields
    assert late.message == f"Outbound socket (127.0.0.1:{child_port} -> 127.0.0.1:{port(listener)}) OPEN"
    # the same socket, seen while its process held it: that process and its uid are kept
    assert carried.fields["process"]["pid"] == child.pid
    assert carried.fields["user"] == {"id": str(NOBODY), "name": "nobody"}
    # (only this socket: other sockets of the machine may open meanwhile)
    assert events_for(watcher.diff(alive, orphaned, at_startup=False), key) == []

    server.close()  # the orphan gets its FIN and goes away
    gone = wait_until(lambda: (lambda snapshot: snapshot if find(snapshot, child_port) is None else None)(
        watcher.observe()), "the orphan to go away")
    [closed] = events_for(checked(watcher.diff(orphaned, gone, at_startup=False)), key)
    assert closed.action == "socket_closed" and closed.fields["process"]["pid"] == child.pid


# --------------------------------------------------------------------------------------------------------
# Connections whose process exits before it is attributed
# --------------------------------------------------------------------------------------------------------

def with_child_gone_before_the_scan(dataset: Any, child: subprocess.Popen, poll: Callable[[], Any]) -> Any:
    """Run `poll` with `child` made to exit just before the dataset's process scan: the poll's dump saw the
    child's socket while the child held it, but no process is left to attribute it to."""
    owners = dataset.observer.owners
    scan = owners.resolve

    def child_exits_before_the_scan(unknown: set[int]) -> None:
        if child.poll() is None:
            child.communicate("exit\n", timeout=DEADLINE)
        scan(unknown)
    owners.resolve = child_exits_before_the_scan  # type: ignore[method-assign]
    try:
        return poll()
    finally:
        owners.resolve = scan  # type: ignore[method-assign]


def short_connection_maker(uid: int) -> str:
    """A child (of `uid`) that connects to 127.0.0.1:argv[1], prints its port, and exits on a line of stdin."""
    drop = DROP_TO_NOBODY if uid == NOBODY else "pass"
    return f"""
        import os, socket, sys
        {drop}
        client = socket.socket()
        client.connect(("127.0.0.1", int(sys.argv[1])))
        print(client.getsockname()[1], flush=True)
        sys.stdin.readline()
    """


@pytest.mark.parametrize(("uid", "name"), [(0, "root"), (NOBODY, "nobody")])
def test_a_connection_whose_process_exits_before_it_is_attributed_is_closed_by_its_user(
        cleanup: contextlib.ExitStack, uid: int, name: str) -> None:
    """The poll's dump sees the child's connection (with its inode and the socket's uid), then the child exits
    before the /proc scan can find which process held it. Made deterministic by letting the child exit when the
    scan starts. The uid of the dump still names the user; the process is left out, never PID -1."""
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    first = dataset.observe()
    child = spawn(cleanup, short_connection_maker(uid), str(port(listener)))
    child_port = int(child.stdout.readline())
    server, _ = listener.accept()
    cleanup.enter_context(server)
    seen = with_child_gone_before_the_scan(dataset, child, dataset.observe)
    key, record = find(seen, child_port, port(listener))
    assert child.returncode == 0 and record[R_INODE] and record[R_UID] == uid and record[R_PROCESS] == ""

    server.close()  # the child's orphaned socket gets its FIN and is destroyed
    received = read_stream(stream, lambda items: key in {str(item.cookie) for item in items}, "the child's close")
    _, streamed = dataset.apply_stream(seen, received)
    events = without_unknowns(checked([*dataset.diff(first, seen, at_startup=False), *streamed]))
    [opened, closed] = events_for(events, key)
    endpoints = f"127.0.0.1:{child_port} -> 127.0.0.1:{port(listener)}"

    assert (opened.action, closed.action) == ("socket_opened", "socket_closed")
    assert opened.message == f"Outbound socket ({endpoints}) OPENED by user {name} (UID: {uid})"
    assert closed.message == f"Outbound socket ({endpoints}) CLOSED by user {name} (UID: {uid})"
    for event in (opened, closed):
        assert event.fields["user"] == {"id": str(uid), "name": name}
        assert "process" not in event.fields
        assert event.fields["error"]["message"] == f"process not found (inode={record[R_INODE]})"
    assert closed.fields["event"]["duration"] >= 0 and closed.fields["source"]["bytes"] >= 1


# inet_diag_msg after its nlmsghdr: family, state, timer, retrans, the 48-byte sockid, expires, rqueue, wqueue,
# uid, inode (include/uapi/linux/inet_diag.h)
RAW_DIAG_MESSAGE = struct.Struct("=IHHIIBBBB48sIIIII")


def raw_destroy_uids(raw: socket.socket, local_port: int) -> list[int]:
    """The idiag_uid of every destroy notification queued on `raw` for a socket with this local port."""
    uids: list[int] = []
    while select.select([raw], [], [], 0.2)[0]:
        data = raw.recv(1 << 16)
        offset = 0
        while offset + RAW_DIAG_MESSAGE.size <= len(data):
            fields = RAW_DIAG_MESSAGE.unpack_from(data, offset)
            if fields[1] == SOCK_DIAG_BY_FAMILY and decode_sockid(fields[5], fields[9]).local_port == local_port:
                uids.append(fields[13])
            offset += (fields[0] + 3) & ~3
    return uids


def test_a_connection_no_poll_saw_has_neither_process_nor_user(cleanup: contextlib.ExitStack) -> None:
    """A child of nobody connects and exits at once, between two polls: the destroy notification is all there
    is, and the kernel zeroes its idiag_uid (inet_diag_handler_get_info fills only the sockid and state), so the
    user is unknown rather than root. Both synthesized events leave process and user out, message included."""
    raw = cleanup.enter_context(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG))
    raw.bind((0, 0))
    raw.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, SKNLGRP_INET_TCP_DESTROY)
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    before = dataset.observe()
    child = spawn(cleanup, short_connection_maker(NOBODY), str(port(listener)))
    child_port = int(child.stdout.readline())
    server, _ = listener.accept()
    cleanup.enter_context(server)
    child.communicate("exit\n", timeout=DEADLINE)
    server.close()

    def child_closed(items: list[Destroyed]) -> bool:
        return any((item.local_port, item.remote_port) == (child_port, port(listener)) for item in items)
    received = read_stream(stream, child_closed, "the child's close")
    _, streamed = dataset.apply_stream(before, received)
    [cookie] = {str(item.cookie) for item in received if item.local_port == child_port}
    events = without_unknowns(checked(streamed))
    [opened, closed] = events_for(events, cookie)
    endpoints = f"127.0.0.1:{child_port} -> 127.0.0.1:{port(listener)}"

    assert raw_destroy_uids(raw, child_port) == [0]  # nobody's socket, yet uid 0: not evidence of root
    assert opened.message == f"Outbound socket ({endpoints}) OPENED"
    assert closed.message == f"Outbound socket ({endpoints}) CLOSED"
    for event in (opened, closed):
        assert "process" not in event.fields and "user" not in event.fields
        assert event.fields["system"]["audit"]["socket"]["short_lived"] is True


# --------------------------------------------------------------------------------------------------------
# The destroy stream
# --------------------------------------------------------------------------------------------------------

def test_a_thousand_short_lived_connections_are_all_reported_closed(cleanup: contextlib.ExitStack) -> None:
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    before = dataset.observe()
    listening_port = port(listener)
    client_ports: set[int] = set()
    for _ in range(1000):
        with socket.create_connection(("127.0.0.1", listening_port)) as client:
            server, _ = listener.accept()
            client_ports.add(port(client))
        server.close()

    def ours(items: list[Destroyed]) -> int:
        return sum(1 for item in items
                   if (item.local_port, item.remote_port) in ((listening_port, item.remote_port),
                                                              (item.local_port, listening_port))
                   and ({item.local_port, item.remote_port} - {listening_port}) <= client_ports)
    received = read_stream(stream, lambda items: ours(items) >= 2000, "2,000 destroy notifications")
    committed, events = dataset.apply_stream(before, received)
    closed = {(event.fields["network"]["direction"], event.fields["source"]["port"]) for event in events
              if event.action == "socket_closed" and event.fields["destination"]["port"] == listening_port}

    assert closed == {(direction, client_port) for client_port in client_ports
                      for direction in ("outbound", "inbound")}
    assert stream.lost() == 0
    sample = [event for event in events if event.fields.get("source", {}).get("port") in client_ports][:50]
    checked(sample)
    assert all(event.fields["system"]["audit"]["socket"]["short_lived"] for event in sample)
    after = dataset.observe()
    # Only this test's connections (a client port paired with the listener's): other loopback sockets of the
    # machine (a broker, another test) may open and close meanwhile on a port that was once a client port.
    assert not [event for event in dataset.diff(committed, after, at_startup=False)
                if {event.fields.get("source", {}).get("port"), event.fields.get("destination", {}).get("port")}
                & client_ports and listening_port in (event.fields.get("source", {}).get("port"),
                                                      event.fields.get("destination", {}).get("port"))]


def test_sockets_seen_by_a_poll_close_with_their_process_traffic_and_duration(cleanup: contextlib.ExitStack) -> None:
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    dataset.observe()
    pairs = [connect(cleanup, listener) for _ in range(10)]
    for client, server in pairs:
        client.sendall(b"x" * 100)
        server.recv(100, socket.MSG_WAITALL)
        server.sendall(b"y" * 40)
        client.recv(40, socket.MSG_WAITALL)
    seen = dataset.observe()
    keys = {find(seen, port(client), port(listener))[0] for client, _ in pairs}
    keys |= {find(seen, port(listener), port(client))[0] for client, _ in pairs}
    for client, server in pairs:
        client.close()
        server.close()
    received = read_stream(stream, lambda items: keys <= {str(item.cookie) for item in items},
                           "the 20 sockets' destroy notifications")
    committed, events = dataset.apply_stream(seen, received)
    closed = [event for event in checked(events) if event.fields["system"]["audit"]["socket"]["cookie"] in keys]
    me = own_process()

    assert len(closed) == 20 and {event.action for event in closed} == {"socket_closed"}
    for event in closed:
        assert event.fields["process"] == me and event.fields["user"]["name"] == "root"
        client_to_server, server_to_client = event.fields["source"]["bytes"], event.fields["destination"]["bytes"]
        assert 100 <= client_to_server <= 102 and 40 <= server_to_client <= 42  # the kernel counts SYN/FIN too
        assert event.fields["event"]["duration"] >= 0 and "short_lived" not in event.fields["system"]["audit"]["socket"]
    assert not [event for event in dataset.diff(committed, dataset.observe(), at_startup=False)
                if event.fields["system"]["audit"]["socket"]["cookie"] in keys]


def test_a_close_the_poll_reported_first_is_not_reported_again_by_the_stream(cleanup: contextlib.ExitStack) -> None:
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    dataset.observe()
    client, server = connect(cleanup, listener)
    seen = dataset.observe()
    key, _ = find(seen, port(client), port(listener))
    client.close()
    server.close()
    gone = wait_until(lambda: (lambda snapshot: snapshot if key not in snapshot["sockets"] else None)(
        dataset.observe()), "the connection to leave the dump")
    by_poll = events_for(dataset.diff(seen, gone, at_startup=False), key)
    received = read_stream(stream, lambda items: key in {str(item.cookie) for item in items}, "the destroy")
    _, by_stream = dataset.apply_stream(gone, received)

    assert [event.action for event in by_poll] == ["socket_closed"]
    assert events_for(by_stream, key) == []


def test_a_connection_closed_into_timewait_is_closed_once(cleanup: contextlib.ExitStack) -> None:
    """A client that closes first (default TCP_LINGER2) is destroyed at once and leaves a timewait minisocket that
    the kernel dumps as FIN_WAIT2 under the same cookie until the peer closes: the stream reports the close, and
    the polls that still find those remains neither open the socket again nor close it a second time."""
    dataset = make_dataset(cleanup, include_localhost=True)
    stream = open_stream(cleanup, dataset)
    listener = listen(cleanup)
    first = dataset.observe()
    client, server = connect(cleanup, listener)
    client_port = port(client)
    seen = dataset.observe()
    key, _ = find(seen, client_port, port(listener))
    client.close()  # FIN_WAIT2 once the server's kernel acknowledges; the server side waits in CLOSE_WAIT
    received = read_stream(stream, lambda items: key in {str(item.cookie) for item in items}, "the client's destroy")
    committed, streamed = dataset.apply_stream(seen, received)
    polls = [committed]
    for _ in range(3):
        polls.append(dataset.observe())
    server.close()
    gone = wait_until(lambda: (lambda snapshot: snapshot if find(snapshot, port(listener), client_port) is None
                               else None)(dataset.observe()), "the server side to close")
    received = read_stream(stream, lambda items: bool(items), "the server side's destroy")
    after_stream, _ = dataset.apply_stream(polls[-1], received)
    polls += [after_stream, gone, dataset.observe()]
    events = [*dataset.diff(first, seen, at_startup=False), *streamed]
    events += [event for before, after in zip(polls, polls[1:])
               for event in dataset.diff(json.loads(json.dumps(before)), after, at_startup=False)]

    assert [event.action for event in events_for(events, key)] == ["socket_opened", "socket_closed"]
    assert not any(events_for(dataset.state_report(poll), key) for poll in polls)


def test_the_stream_has_a_large_receive_buffer(cleanup: contextlib.ExitStack) -> None:
    stream = open_stream(cleanup, make_dataset(cleanup))
    assert stream.receive_buffer() >= 2 * DEFAULT_STREAM_BUFFER  # SO_RCVBUFFORCE, past net.core.rmem_max


def test_notifications_the_kernel_drops_are_counted_as_lost(cleanup: contextlib.ExitStack) -> None:
    stream = DestroyListener(destroy_groups(False), receive_buffer=4096)  # room for a handful only
    cleanup.callback(stream.close)
    listener = listen(cleanup)
    for _ in range(200):
        client, server = connect(cleanup, listener)
        client.close()
        server.close()
    wait_until(lambda: stream.lost() >= 100, "the kernel's drops to show in lost()")
    kept: list[Destroyed] = []
    while batch := stream.read(0.2):  # what the buffer held; reading also meets the ENOBUFS error
        kept += batch

    assert kept and stream.lost() + len(kept) >= 400


def test_a_refused_stream_is_none_after_one_warning() -> None:
    """The kernel refusing the subscription (here: no file descriptor left, EMFILE) leaves polling alone."""
    code = """
        import logging, os, resource, sys
        from pathlib import Path
        from actors.datasets import DatasetContext
        from actors.datasets.socket.dataset import SocketDataset
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
        dataset = SocketDataset(DatasetContext(hostfs=Path("/")))
        snapshot = dataset.observe()  # opens the dump socket while descriptors are left
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd")) - 1  # not counting the listing's own descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, limits[1]))
        print(dataset.open_stream())
        print(dataset.open_stream())
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        print(isinstance(dataset.observe()["sockets"], dict))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=60, check=True)

    assert result.stdout.split() == ["None", "None", "True"]  # polling still works
    warnings = [line for line in result.stderr.splitlines() if "destroy notifications" in line]
    assert len(warnings) == 1 and "Too many open files" in warnings[0]


def test_an_unprivileged_user_may_join_the_destroy_groups(cleanup: contextlib.ExitStack) -> None:
    """Documents the kernel (NL_CFG_F_NONROOT_RECV on sock_diag): the stream does not need CAP_NET_ADMIN, and
    it reports every socket of the network namespace, not only the user's own."""
    child = spawn(cleanup, f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from actors.datasets.socket.sock_diag import DestroyListener, destroy_groups
        {DROP_TO_NOBODY}
        stream = DestroyListener(destroy_groups(False), 1 << 20)
        print("subscribed", flush=True)
        sys.stdin.readline()
        print(" ".join(str(item.local_port) for item in stream.read(5.0)), flush=True)
    """)
    assert child.stdout.readline().strip() == "subscribed"
    listener = listen(cleanup)
    client, server = connect(cleanup, listener)
    client_port = port(client)
    client.close()
    server.close()
    output, _ = child.communicate("read\n", timeout=DEADLINE)

    assert str(client_port) in output.split()


# --------------------------------------------------------------------------------------------------------
# Snapshots and attribution cost
# --------------------------------------------------------------------------------------------------------

def test_a_real_snapshot_diffs_right_after_a_json_round_trip(cleanup: contextlib.ExitStack) -> None:
    dataset = make_dataset(cleanup, include_localhost=True)
    listener = listen(cleanup)
    before = json.loads(json.dumps(dataset.observe()))
    client, _server = connect(cleanup, listener)
    after = dataset.observe()
    opened = dataset.diff(before, after, at_startup=True)
    client_key, _ = find(after, port(client), port(listener))

    assert [event.action for event in events_for(opened, client_key)] == ["socket_opened"]
    assert events_for(dataset.diff(json.loads(json.dumps(after)), dataset.observe(), at_startup=True), client_key) == []


def test_polls_rescan_a_process_only_when_it_may_hold_a_new_socket(cleanup: contextlib.ExitStack) -> None:
    dataset = make_dataset(cleanup, include_localhost=True, full_scan_interval=3600)
    listener = listen(cleanup)
    held = [connect(cleanup, listener) for _ in range(100)]
    dataset.observe()  # the first poll scans every process once
    owners = dataset.observer.owners
    me = owners.processes[os.getpid()]
    full_scan_at = owners._last_full_scan
    for _ in range(3):
        dataset.observe()
    assert owners.processes[os.getpid()] is me  # all its sockets known: not scanned again

    client, _server = connect(cleanup, listener)
    snapshot = dataset.observe()
    key, record = find(snapshot, port(client), port(listener))

    assert snapshot["processes"][record[R_PROCESS]][0] == os.getpid()
    assert owners.processes[os.getpid()] is not me  # rescanned: it had opened files
    assert owners._last_full_scan == full_scan_at  # found without a full scan
    assert len(held) == 100


# --------------------------------------------------------------------------------------------------------
# Issue 14: a loopback session as a new user tries it, driven as the collector runtime drives the dataset
# --------------------------------------------------------------------------------------------------------

class Collector:
    """Drives a dataset as actors/runtime/collector.py does: each poll diffs against the committed snapshot (and
    reports state when asked), each batch of the stream is folded into the committed snapshot; every snapshot
    goes through JSON, as the state store keeps it. Keeps every event, in order."""

    def __init__(self, dataset: SocketDataset, stream: DestroyListener) -> None:
        self.dataset, self.stream = dataset, stream
        self.committed: Any = None
        self.events: list[Event] = []
        self.reports: list[list[Event]] = []

    def poll(self, state_report: bool = False) -> dict[str, Any]:
        current = self.dataset.observe()
        if state_report:
            self.reports.append(list(self.dataset.state_report(current)))
            self.events += self.reports[-1]
        if self.committed is not None:
            self.events += self.dataset.diff(self.committed, current, at_startup=False)
        self.committed = json.loads(json.dumps(current))
        return current

    def read_stream(self, timeout: float = 0.2) -> int:
        items = self.stream.read(timeout)
        if items:
            snapshot, events = self.dataset.apply_stream(self.committed, items)
            self.committed = json.loads(json.dumps(snapshot))
            self.events += events
        return len(items)

    def about(self, ports: set[int]) -> list[Event]:
        return [event for event in self.events
                if {event.fields.get(end, {}).get("port") for end in ("source", "destination")} & ports]


def closes_by_cookie(events: Sequence[Event]) -> dict[str, list[Event]]:
    closes: dict[str, list[Event]] = {}
    for event in events:
        if event.action == "socket_closed":
            closes.setdefault(event.fields["system"]["audit"]["socket"]["cookie"], []).append(event)
    return closes


def test_a_loopback_session_is_reported_once_per_socket_with_every_field_users_query(
        cleanup: contextlib.ExitStack) -> None:
    """Issue 14, as a new user tried it (root): a loopback listener with include_localhost, a 1 MB upload on a
    connection that lives across a state report, and a short connection from a child whose process exits between
    the poll's dump and its /proc scan, so the socket is never attributed; then everything closes."""
    dataset = make_dataset(cleanup, include_localhost=True)
    collector = Collector(dataset, open_stream(cleanup, dataset))
    listener = listen(cleanup)
    collector.poll(state_report=True)

    client, server = connect(cleanup, listener)
    upload = b"u" * (1 << 20)
    client.sendall(upload)
    received = 0
    while received < len(upload):
        received += len(server.recv(1 << 16))
    seen = collector.poll()
    collector.poll(state_report=True)  # a periodic state report while the connection lives
    session_keys = {find(seen, port(listener), 0)[0], find(seen, port(client), port(listener))[0],
                    find(seen, port(listener), port(client))[0]}

    child = spawn(cleanup, short_connection_maker(0), str(port(listener)))
    child_port = int(child.stdout.readline())
    child_server, _ = listener.accept()
    unattributed = with_child_gone_before_the_scan(dataset, child, collector.poll)
    child_key, child_record = find(unattributed, child_port, port(listener))
    assert child.returncode == 0 and child_record[R_PROCESS] == "" and child_record[R_UID] == 0
    session_keys |= {child_key, find(unattributed, port(listener), child_port)[0]}
    # The child's exit closed its end: destroyed at once, its timewait remains listed as FIN_WAIT2 under its
    # cookie while this end stays open. The stream reports the close; the polls meanwhile must not reopen it.
    wait_until(lambda: collector.read_stream() >= 0 and child_key in closes_by_cookie(collector.events),
               "the child's socket closed by the stream")
    collector.poll()
    collector.poll(state_report=True)

    ports = {port(listener), port(client), child_port}
    listener_port, client_port = port(listener), port(client)
    for sock in (child_server, client, server, listener):
        sock.close()
    # The runtime's stream thread reads the destroys as they come, usually before the next poll: so here.
    deadline = time.monotonic() + DEADLINE
    while not session_keys <= set(closes_by_cookie(collector.events)):
        if time.monotonic() > deadline:
            pytest.fail(f"the session's sockets did not all close: {[e.message for e in collector.about(ports)]}")
        collector.read_stream()
    for _ in range(2):  # the polls after: nothing of the session left to open or close again
        collector.poll()
        collector.read_stream(0.05)
    session = without_unknowns(checked(collector.about(ports)))
    assert {event.fields["system"]["audit"]["socket"]["cookie"] for event in session} == session_keys

    # one socket, one open (or state) and one close, whichever path saw it first
    actions: dict[str, list[str]] = {}
    for event in session:
        actions.setdefault(event.fields["system"]["audit"]["socket"]["cookie"], []).append(event.action)
    for cookie, seen in actions.items():
        assert seen.count("socket_closed") == 1 and seen.count("socket_opened") <= 1, (cookie, seen)
    for report in collector.reports:
        cookies = [event.fields["system"]["audit"]["socket"]["cookie"] for event in report]
        assert len(cookies) == len(set(cookies))

    # the unattributed connection: its user from the kernel's dump, no process, no -1
    [child_closed] = closes_by_cookie(session)[child_key]
    assert child_closed.fields["user"] == {"id": "0", "name": "root"} and "process" not in child_closed.fields
    assert child_closed.message == (f"Outbound socket (127.0.0.1:{child_port} -> 127.0.0.1:{listener_port}) "
                                    f"CLOSED by user root (UID: 0)")

    # the long-lived connection: who initiated, the process and its group, times, and its traffic
    me = own_process()
    [[outbound_close], [inbound_close]] = [
        [event for event in session if event.action == "socket_closed"
         and event.fields["network"]["direction"] == direction and event.fields["client"]["port"] == client_port]
        for direction in ("outbound", "inbound")]
    for closed in (outbound_close, inbound_close):
        fields = closed.fields
        assert (fields["client"]["port"], fields["server"]["port"]) == (client_port, listener_port)
        assert fields["client"] == fields["source"] and fields["server"] == fields["destination"]
        assert 1 << 20 <= fields["client"]["bytes"] <= (1 << 20) + 2 and fields["server"]["bytes"] <= 2
        assert fields["network"]["bytes"] == fields["client"]["bytes"] + fields["server"]["bytes"]
        assert fields["process"] == me and fields["group"] == {"id": "0", "name": "root"}
        assert fields["event"]["start"] < fields["event"]["end"] and fields["event"]["duration"] > 0
    [_, report, _] = collector.reports
    [long_lived_state] = [event for event in report if event.fields.get("client", {}).get("port") == client_port
                          and event.fields["network"]["direction"] == "outbound"]
    assert long_lived_state.fields["source"]["bytes"] >= 1 << 20  # its traffic before it closes
    assert long_lived_state.fields["network"]["packets"] > 0
    [listening_close] = [event for event in session if event.action == "socket_closed"
                         and event.fields["network"]["direction"] == "listening"]
    assert listening_close.fields["server"] == {"ip": "127.0.0.1", "port": listener_port}

    # sample.json has the fields of a real close of this kind (those every event has aside)
    sample = json.loads((Path(__file__).resolve().parents[2] / "actors/datasets/socket/sample.json").read_text())
    real = inbound_close.stamped(1).to_document({})
    assert dataset_field_names(real) == dataset_field_names(sample)


def dataset_field_names(document: dict[str, Any]) -> set[str]:
    """The dotted field names of a document that are the dataset's own (not @timestamp, event.*, host.*, ...)."""
    from actors.datasets import is_common_field
    from tests.sample_support import flat_field_names
    return {name for name in flat_field_names(document) if not is_common_field(name)}
