"""Tests of the socket dataset's pure parts: community id, direction, messages, diff, stream folding, parsing."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from actors.datasets.socket.options import parse_options as parse_socket_options
from actors.datasets import DatasetContext
from actors.datasets.socket import dataset as socket_dataset
from actors.datasets.socket.options import SocketOptions
from actors.datasets.socket.dataset import (
    INBOUND, LISTENING, OUTBOUND, R_PROCESS, SOCKET_CLOSED, SOCKET_OPENED, TCP, UDP, ClosedCookies, ListenerTable,
    PI_ARGS, ScannedProcess, SocketDataset, SocketOwners, Traffic, SocketObserver, community_id, new_record, new_snapshot, socket_message,
)
from actors.ecs import assert_ecs
from actors.hostfs.entity import process_entity_id, socket_entity_id
from actors.event import CHANGE, STATE, Event
from actors.datasets.socket.sock_diag import (
    NLMSG_DONE, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY, TCP_CLOSE, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_LISTEN,
    INET_DIAG_INFO, INET_DIAG_INFO_EXTENSION, TIMEWAIT_TIMER, DiagEntry,
    Destroyed, DumpError, decode_sockid, dump_request, parse_destroyed, parse_dump, parse_tcp_info,
)
from actors.hostfs.etc_files import AccountNames
from tests.sample_support import EVENT_FIELDS, flat_field_names, sample_common, sample_path

SAMPLE = sample_path("socket")
HOST_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
BOOT_ID = "6a2f4c1e-3b5d-4e7f-8a9b-0c1d2e3f4a5b"
OBSERVED_AT = 1_700_018_680.123
SSHD = "22799:104857"  # the process key ("pid:start ticks") of the sample sshd
SSHD_ARGS = ["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"]
SSHD_INFO = [22799, 104857, "sshd", "/usr/sbin/sshd", SSHD_ARGS, 1, "0"]  # pid, ticks, name, exe, args, ppid, gid
BOOT_TIME = 1_700_000_000
SSHD_START = "2023-11-14T22:30:48.569Z"  # BOOT_TIME + 104,857 ticks, in go-sysinfo's float arithmetic (truncated)
PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" \
         "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
GROUP = "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\n"


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def hostfs(tmp_path: Path) -> Path:
    """A host root with /etc/passwd, /etc/group and the boot time in /proc/stat (nothing here scans /proc or
    dumps sockets: the polls are stood in for)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT_TIME}\n")
    return tmp_path


def dataset(hostfs: Path, **options: Any) -> SocketDataset:
    return SocketDataset(DatasetContext(hostfs=hostfs, options=options, host_id=HOST_ID))


def sshd_inbound(**changes: Any) -> list[Any]:
    """Auditbeat's documented example: an inbound SSH connection accepted by sshd (root)."""
    values = dict(transport=TCP, family=4, local_ip="10.0.2.15", local_port=22, remote_ip="10.0.2.2",
                  remote_port=55270, inode=123_456, uid=0, direction=INBOUND, process=SSHD, opened_at=None,
                  state=TCP_ESTABLISHED)
    values.update(changes)
    return new_record(**values)


def sshd_listener() -> list[Any]:
    return new_record(TCP, 4, "0.0.0.0", 22, "0.0.0.0", 0, 1111, 0, LISTENING, SSHD, None, TCP_LISTEN)


def curl_outbound() -> list[Any]:
    return new_record(TCP, 4, "10.0.2.15", 40512, "93.184.216.34", 443, 222_222, 1000, OUTBOUND, "", 1_700_018_600.0,
                      TCP_ESTABLISHED)


def snapshot(sockets: dict[str, list[Any]], boot_id: str = BOOT_ID, observed_at: float = OBSERVED_AT) -> dict:
    listeners = ListenerTable()
    for record in sockets.values():
        if record[5] == 0:
            listeners.add(record[0], record[2], record[3])
    return new_snapshot(sockets, {SSHD: SSHD_INFO}, listeners, boot_id, observed_at)


def round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def destroyed(local: tuple[str, int], remote: tuple[str, int], cookie: int, *, protocol: int = socket.IPPROTO_TCP,
              acked: int | None = 1500, received: int | None = 300, at: float = OBSERVED_AT + 5) -> Destroyed:
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    return Destroyed(family=family, protocol=protocol, state=7, local_ip=local[0], local_port=local[1],
                     remote_ip=remote[0], remote_port=remote[1], cookie=cookie, at=at, bytes_acked=acked,
                     bytes_received=received, segments_out=12 if acked is not None else None,
                     segments_in=9 if received is not None else None)


def document(event: Event) -> dict[str, Any]:
    return event.stamped(1).to_document({})


# --------------------------------------------------------------------------------------------------------
# Community ID and entity ids
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("transport", "source", "destination", "seed", "expected"),
    [
        # Beats' flowhash golden file (tcp.pcap) and the community-id-spec baseline
        (TCP, ("128.232.110.120", 34855), ("66.35.250.204", 80), 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        (TCP, ("1.2.3.4", 1122), ("5.6.7.8", 3344), 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
        (UDP, ("1.2.3.4", 1122), ("5.6.7.8", 3344), 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
        (TCP, ("1.2.3.4", 1122), ("5.6.7.8", 3344), 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
        (UDP, ("1.2.3.4", 1122), ("5.6.7.8", 3344), 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
        # Beats' flowhash golden file (ipv6.pcap)
        (TCP, ("2001:470:e5bf:dead:4957:2174:e82c:4887", 63943), ("2607:f8b0:400c:c03::1a", 25), 0,
         "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    ],
)
def test_community_id_matches_the_published_vectors_in_both_directions(
        transport: str, source: tuple[str, int], destination: tuple[str, int], seed: int, expected: str) -> None:
    assert community_id(transport, *source, *destination, seed=seed) == expected
    assert community_id(transport, *destination, *source, seed=seed) == expected


@given(st.ip_addresses(v=4).map(str), st.integers(0, 65535), st.ip_addresses(v=4).map(str), st.integers(0, 65535),
       st.sampled_from([TCP, UDP]))
def test_community_id_is_the_same_from_either_end(source_ip: str, source_port: int, destination_ip: str,
                                                   destination_port: int, transport: str) -> None:
    forward = community_id(transport, source_ip, source_port, destination_ip, destination_port)
    assert forward == community_id(transport, destination_ip, destination_port, source_ip, source_port)
    assert forward.startswith("1:") and len(base64.b64decode(forward[2:])) == 20


def test_socket_entity_id_for_a_fixed_input_follows_auditbeats_bytes() -> None:
    mapped = lambda address: b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(address)  # noqa: E731
    expected_bytes = (HOST_ID.encode() + struct.pack("<q", 123_456) + mapped("10.0.2.15") + mapped("10.0.2.2")
                      + struct.pack("<q", 22) + struct.pack("<q", 55270))
    expected = base64.b64encode(hashlib.sha256(expected_bytes).digest()[:12]).decode()

    assert socket_entity_id(HOST_ID, 123_456, "10.0.2.15", "10.0.2.2", 22, 55270) == expected == "arTre7CPLnr526gC"


@pytest.mark.parametrize(("local_ip", "remote_ip"), [("10.0.2.15", "10.0.2.2"), ("2001:db8::1", "2001:db8::2"),
                                                  ("::ffff:10.0.2.15", "::1"), ("0.0.0.0", "::")])
def test_socket_entity_id_hashes_go_s_16_byte_addresses(local_ip: str, remote_ip: str) -> None:
    import ipaddress

    def go_ip16(address: str) -> bytes:  # net.IP: IPv4 as ::ffff:a.b.c.d
        ip = ipaddress.ip_address(address)
        return ipaddress.IPv6Address(f"::ffff:{address}").packed if ip.version == 4 else ip.packed
    expected = base64.b64encode(hashlib.sha256(
        HOST_ID.encode() + struct.pack("<q", 7) + go_ip16(local_ip) + go_ip16(remote_ip) + struct.pack("<q", 22)
        + struct.pack("<q", 40000)).digest()[:12]).decode()

    assert socket_entity_id(HOST_ID, 7, local_ip, remote_ip, 22, 40000) == expected


def test_socket_event_carries_the_socket_and_process_entity_ids(hostfs: Path) -> None:
    [event] = dataset(hostfs).state_report(snapshot({"7": sshd_inbound()}))

    assert event.fields["system"]["audit"]["socket"]["entity_id"] == "arTre7CPLnr526gC"
    assert event.fields["process"]["entity_id"] == process_entity_id(HOST_ID, 22799, 104857)


def test_without_a_host_id_entity_ids_are_left_out(hostfs: Path) -> None:
    plain = SocketDataset(DatasetContext(hostfs=hostfs))
    [event] = plain.state_report(snapshot({"7": sshd_inbound()}))

    assert "entity_id" not in event.fields["system"]["audit"]["socket"]
    assert "entity_id" not in event.fields["process"]


# --------------------------------------------------------------------------------------------------------
# Direction (Auditbeat's ListenerTable)
# --------------------------------------------------------------------------------------------------------

def test_remote_port_zero_is_listening() -> None:
    assert ListenerTable().direction(TCP, 4, "0.0.0.0", 22, 0) == LISTENING


def test_listener_on_the_same_ip_and_port_makes_a_socket_inbound() -> None:
    table = ListenerTable()
    table.add(TCP, "10.0.2.15", 22)

    assert table.direction(TCP, 4, "10.0.2.15", 22, 55270) == INBOUND
    assert table.direction(TCP, 4, "10.0.2.16", 22, 55270) == OUTBOUND
    assert table.direction(TCP, 4, "10.0.2.15", 23, 55270) == OUTBOUND


def test_listener_on_the_unspecified_address_of_the_same_family_makes_a_socket_inbound() -> None:
    v4_any, v6_any = ListenerTable(), ListenerTable()
    v4_any.add(TCP, "0.0.0.0", 80)
    v6_any.add(TCP, "::", 80)

    assert v4_any.direction(TCP, 4, "192.168.1.2", 80, 41000) == INBOUND
    assert v6_any.direction(TCP, 6, "2001:db8::2", 80, 41000) == INBOUND
    assert v6_any.direction(TCP, 6, "192.168.1.2", 80, 41000) == INBOUND  # IPv4-mapped on a dual-stack listener
    assert v6_any.direction(TCP, 4, "192.168.1.2", 80, 41000) == OUTBOUND  # as Auditbeat: :: only for AF_INET6
    assert v4_any.direction(TCP, 6, "2001:db8::2", 80, 41000) == OUTBOUND


def test_a_udp_listener_does_not_make_a_tcp_socket_inbound() -> None:
    table = ListenerTable()
    table.add(UDP, "0.0.0.0", 53)

    assert table.direction(TCP, 4, "10.0.0.1", 53, 5353) == OUTBOUND
    assert table.direction(UDP, 4, "10.0.0.1", 53, 5353) == INBOUND


def test_listener_table_survives_json() -> None:
    table = ListenerTable()
    table.add(TCP, "::", 443)
    restored = ListenerTable(round_trip(table.to_json()))

    assert restored.direction(TCP, 6, "::1", 443, 50000) == INBOUND


# --------------------------------------------------------------------------------------------------------
# Fields and messages
# --------------------------------------------------------------------------------------------------------

def test_message_is_auditbeats_v1_format(hostfs: Path) -> None:
    closed = dataset(hostfs).diff(snapshot({"7": sshd_inbound()}), snapshot({}), at_startup=False)

    assert [event.message for event in closed] == [
        "Inbound socket (10.0.2.2:55270 -> 10.0.2.15:22) CLOSED by process sshd (PID: 22799) and user root (UID: 0)"]


def test_outbound_and_listening_messages_and_the_open_verb(hostfs: Path) -> None:
    events = dataset(hostfs).state_report(snapshot({"1": sshd_listener(), "2": curl_outbound()}))

    assert [event.message for event in events] == [
        "Listening socket (0.0.0.0:22) OPEN by process sshd (PID: 22799) and user root (UID: 0)",
        "Outbound socket (10.0.2.15:40512 -> 93.184.216.34:443) OPEN by user alice (UID: 1000)",
    ]


def test_ipv6_endpoints_are_bracketed_in_the_message(hostfs: Path) -> None:
    record = new_record(TCP, 6, "2001:db8::1", 22, "2001:db8::2", 50000, 5, 0, INBOUND, SSHD, None, TCP_ESTABLISHED)
    [event] = dataset(hostfs).state_report(snapshot({"3": record}))

    assert event.message.startswith("Inbound socket ([2001:db8::2]:50000 -> [2001:db8::1]:22) OPEN")
    assert event.fields["network"]["type"] == "ipv6"


def test_inbound_fields_put_the_remote_end_in_source(hostfs: Path) -> None:
    [event] = dataset(hostfs).state_report(snapshot({"7": sshd_inbound()}))
    fields = event.fields

    assert fields["source"] == {"ip": "10.0.2.2", "port": 55270}
    assert fields["destination"] == {"ip": "10.0.2.15", "port": 22}
    # the remote end initiated: ECS's client, as Auditbeat's socket flows set it beside source
    assert fields["client"] == fields["source"] and fields["server"] == fields["destination"]
    assert fields["network"] == {"direction": "inbound", "transport": "tcp", "type": "ipv4", "iana_number": "6",
                                 "community_id": community_id(TCP, "10.0.2.2", 55270, "10.0.2.15", 22)}
    assert fields["process"] == {"pid": 22799, "name": "sshd", "executable": "/usr/sbin/sshd", "args": SSHD_ARGS,
                                 "start": SSHD_START, "parent": {"pid": 1},
                                 "entity_id": process_entity_id(HOST_ID, 22799, 104857)}
    assert fields["user"] == {"id": "0", "name": "root"} and fields["group"] == {"id": "0", "name": "root"}
    assert fields["related"] == {"ip": ["10.0.2.15", "10.0.2.2"], "user": ["root"]}
    assert fields["system"]["audit"]["socket"]["state"] == "ESTABLISHED"
    assert (event.kind, event.category, event.type) == (STATE, ("network",), ("connection", "info"))


def test_outbound_fields_put_the_local_end_in_source(hostfs: Path) -> None:
    [event] = dataset(hostfs).state_report(snapshot({"2": curl_outbound()}))

    assert event.fields["source"] == event.fields["client"] == {"ip": "10.0.2.15", "port": 40512}
    assert event.fields["destination"] == event.fields["server"] == {"ip": "93.184.216.34", "port": 443}


def test_listening_socket_has_only_a_destination_and_no_community_id(hostfs: Path) -> None:
    [event] = dataset(hostfs).state_report(snapshot({"1": sshd_listener()}))

    assert "source" not in event.fields and event.fields["destination"] == {"ip": "0.0.0.0", "port": 22}
    assert "client" not in event.fields and event.fields["server"] == {"ip": "0.0.0.0", "port": 22}
    assert "community_id" not in event.fields["network"]


def test_a_process_from_a_snapshot_written_before_args_were_kept_is_still_named(hostfs: Path) -> None:
    old = new_snapshot({"7": sshd_inbound()}, {SSHD: SSHD_INFO[:4]}, None, BOOT_ID, OBSERVED_AT)
    [event] = dataset(hostfs).state_report(round_trip(old))

    assert event.fields["process"] == {"pid": 22799, "name": "sshd", "executable": "/usr/sbin/sshd",
                                       "start": SSHD_START, "entity_id": process_entity_id(HOST_ID, 22799, 104857)}
    assert "group" not in event.fields


def test_a_group_without_a_name_has_its_id_alone(hostfs: Path) -> None:
    orphaned_group = new_snapshot({"7": sshd_inbound()}, {SSHD: [*SSHD_INFO[:6], "4242"]}, None, BOOT_ID, OBSERVED_AT)
    [event] = dataset(hostfs).state_report(orphaned_group)

    assert event.fields["group"] == {"id": "4242"}


def test_user_id_is_a_string_and_an_unknown_uid_has_no_name(hostfs: Path) -> None:
    record = sshd_inbound(uid=4242, process="")
    [event] = dataset(hostfs).state_report(snapshot({"7": record}))

    assert event.fields["user"] == {"id": "4242"}
    assert event.message.endswith(") OPEN by user (UID: 4242)")


def test_user_name_follows_changes_to_the_passwd_file(hostfs: Path) -> None:
    monitored = dataset(hostfs)
    monitored.users.recheck_seconds = 0.0
    before = monitored.state_report(snapshot({"2": curl_outbound()}))
    (hostfs / "etc" / "passwd").write_text(PASSWD.replace("alice:", "alicia:"))
    after = monitored.state_report(snapshot({"2": curl_outbound()}))

    assert before[0].fields["user"]["name"] == "alice" and after[0].fields["user"]["name"] == "alicia"


def test_socket_without_process_says_why(hostfs: Path) -> None:
    orphan = sshd_inbound(inode=0, process="", state=TCP_FIN_WAIT2)
    unknown = sshd_inbound(process="")
    events = dataset(hostfs).state_report(snapshot({"1": orphan, "2": unknown}))

    assert [event.fields["error"]["message"] for event in events] == [
        "process has exited (inode=0)", "process not found (inode=123456)"]
    assert all("process" not in event.fields for event in events)
    assert all(event.fields["user"]["id"] == "0" for event in events)


def test_a_socket_whose_process_is_unknown_is_reported_by_its_user_alone(hostfs: Path) -> None:
    """The process exited before it could be attributed: the socket's uid (from the dump) still names the user."""
    record = curl_outbound()  # uid 1000, no process
    closed = dataset(hostfs).diff(snapshot({"2": record}), snapshot({}, observed_at=1_700_018_630.0), False)
    [event] = closed
    fields = event.fields

    assert event.message == "Outbound socket (10.0.2.15:40512 -> 93.184.216.34:443) CLOSED by user alice (UID: 1000)"
    assert "process" not in fields
    assert fields["user"] == {"id": "1000", "name": "alice"}
    assert fields["related"] == {"ip": ["10.0.2.15", "93.184.216.34"], "user": ["alice"]}
    assert fields["error"] == {"message": "process not found (inode=222222)"}
    assert_ecs(document(event), EVENT_FIELDS)


@pytest.mark.parametrize(
    ("process", "user", "ending"),
    [
        (("sshd", 22799), ("root", 0), "CLOSED by process sshd (PID: 22799) and user root (UID: 0)"),
        (None, ("root", 0), "CLOSED by user root (UID: 0)"),
        (("sshd", 22799), None, "CLOSED by process sshd (PID: 22799)"),
        (None, None, "CLOSED"),
        (None, ("", 4242), "CLOSED by user (UID: 4242)"),
        (("", 22799), ("", 4242), "CLOSED by process (PID: 22799) and user (UID: 4242)"),
    ],
)
def test_message_leaves_out_what_is_unknown(process: tuple[str, int] | None, user: tuple[str, int] | None,
                                            ending: str) -> None:
    record = new_record(TCP, 4, "10.0.0.1", 1234, "10.0.0.2", 80, 5, 0, OUTBOUND, "", None, TCP_ESTABLISHED)

    assert socket_message(record, "CLOSED", process, user) == f"Outbound socket (10.0.0.1:1234 -> 10.0.0.2:80) {ending}"


@pytest.mark.parametrize("process", [SSHD, "", "4444:1"])  # known, none, a key the snapshot does not hold
@pytest.mark.parametrize("uid", [0, 1000, 4242, None])  # named, named, no account, unknown (orphan)
@pytest.mark.parametrize("inode", [123_456, 0])
def test_no_event_has_a_pid_or_uid_of_minus_one_or_an_empty_name(hostfs: Path, process: str, uid: int | None,
                                                                  inode: int) -> None:
    record = sshd_inbound(process=process, uid=uid, inode=inode, opened_at=OBSERVED_AT - 1)
    monitored = dataset(hostfs)
    events = [*monitored.state_report(snapshot({"7": record})),
              *monitored.diff(snapshot({"7": record}), snapshot({}), at_startup=False)]
    _, streamed = dataset(hostfs).apply_stream(snapshot({"7": record}),
                                               [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55270), 7)])
    events += streamed

    assert len(events) == 3
    for event in events:
        fields = event.fields
        assert "-1" not in event.message and "  " not in event.message and " ()" not in event.message
        assert ("process" in fields) == (process == SSHD)
        assert fields.get("process", {}).get("pid", 0) > -1 and fields.get("process", {}).get("name", "x")
        assert ("error" in fields) == (process != SSHD)
        assert ("user" in fields) == (uid is not None)
        assert fields.get("user", {}).get("id") == (None if uid is None else str(uid))
        assert fields.get("user", {}).get("name", "x") and "" not in fields["related"].get("user", [])
        if uid is not None:
            ending: Any = {0: "user root (UID: 0)", 1000: "user alice (UID: 1000)", 4242: "user (UID: 4242)"}[uid]
        else:
            ending = "by process sshd (PID: 22799)" if process == SSHD else ("22) OPEN", "22) CLOSED")
        assert event.message.endswith(ending)
        assert_ecs(document(event), EVENT_FIELDS)


def test_every_event_kind_is_valid_ecs(hostfs: Path) -> None:
    monitored = dataset(hostfs)
    before = snapshot({"1": sshd_listener(), "7": sshd_inbound(), "2": curl_outbound()})
    after = snapshot({"1": sshd_listener(), "8": sshd_inbound(remote_port=55271, inode=9)})
    events = [*monitored.state_report(before), *monitored.diff(before, after, False)]
    _, streamed = monitored.apply_stream(after, [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55271), 8),
                                                 destroyed(("10.0.2.15", 40999), ("1.1.1.1", 443), 99)])
    events += streamed

    assert len(events) == 3 + 3 + 3
    for event in events:
        assert_ecs(document(event), EVENT_FIELDS)


def test_options_default_as_auditbeat() -> None:
    assert parse_socket_options({}) == SocketOptions(include_localhost=False, include_udp=False)
    assert parse_socket_options({"include_localhost": True, "include_udp": True}).include_udp


# --------------------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------------------

def test_first_run_diff_reports_nothing(hostfs: Path) -> None:
    assert dataset(hostfs).diff(None, snapshot({"7": sshd_inbound()}), at_startup=False) == []


def test_diff_reports_closed_then_opened_sockets(hostfs: Path) -> None:
    before = snapshot({"1": sshd_listener(), "7": sshd_inbound()})
    after = snapshot({"1": sshd_listener(), "2": curl_outbound()})
    events = dataset(hostfs).diff(before, after, at_startup=False)

    assert [(event.action, event.kind, event.type) for event in events] == [
        ("socket_closed", CHANGE, ("connection", "end")), ("socket_opened", CHANGE, ("connection", "start"))]
    assert events[0].fields["source"]["port"] == 55270 and events[1].fields["destination"]["port"] == 443
    assert all(event.timestamp == OBSERVED_AT for event in events)


def test_diff_is_right_after_a_json_round_trip(hostfs: Path) -> None:
    before = snapshot({"1": sshd_listener(), "7": sshd_inbound()})
    after = snapshot({"1": sshd_listener(), "2": curl_outbound()})
    expected = [(event.action, event.message) for event in dataset(hostfs).diff(before, after, False)]

    restored = dataset(hostfs).diff(round_trip(before), after, at_startup=True)

    assert [(event.action, event.message) for event in restored] == expected
    assert dataset(hostfs).diff(round_trip(after), after, at_startup=True) == []


def test_closed_socket_uses_the_process_of_the_previous_snapshot(hostfs: Path) -> None:
    before = snapshot({"7": sshd_inbound()})
    after = new_snapshot({}, boot_id=BOOT_ID, observed_at=OBSERVED_AT + 10)  # sshd no longer listed
    [closed] = dataset(hostfs).diff(before, after, at_startup=False)

    assert closed.fields["process"]["name"] == "sshd"


def test_closing_a_socket_seen_opening_reports_its_duration(hostfs: Path) -> None:
    before = snapshot({"2": curl_outbound()})
    [closed] = dataset(hostfs).diff(before, snapshot({}, observed_at=1_700_018_630.0), at_startup=False)

    assert closed.fields["event"] == {"start": "2023-11-15T03:23:20.000Z", "end": "2023-11-15T03:23:50.000Z",
                                      "duration": 30 * 1_000_000_000}


def test_a_close_of_a_socket_there_since_the_first_poll_has_its_end_but_no_start(hostfs: Path) -> None:
    [closed] = dataset(hostfs).diff(snapshot({"7": sshd_inbound()}), snapshot({}, observed_at=1_700_018_630.0),
                                    at_startup=False)

    assert closed.fields["event"] == {"end": "2023-11-15T03:23:50.000Z"}


def test_same_cookie_with_new_endpoints_is_a_closed_and_an_opened_socket(hostfs: Path) -> None:
    unconnected = new_record(UDP, 4, "10.0.2.15", 5000, "0.0.0.0", 0, 77, 0, LISTENING, "", None, 7)
    connected = new_record(UDP, 4, "10.0.2.15", 5000, "10.0.2.3", 53, 77, 0, OUTBOUND, "", None, 1)
    events = dataset(hostfs).diff(snapshot({"5": unconnected}), snapshot({"5": connected}), at_startup=False)

    assert [(event.action, event.fields["network"]["direction"]) for event in events] == [
        ("socket_closed", "listening"), ("socket_opened", "outbound")]


def test_orphaned_socket_is_the_same_socket(hostfs: Path) -> None:
    """A process closing its socket drops its inode to 0; the kernel cookie (the key) stays."""
    orphan = sshd_inbound(state=TCP_FIN_WAIT2)
    assert dataset(hostfs).diff(snapshot({"7": sshd_inbound()}), snapshot({"7": orphan}), at_startup=False) == []


def test_a_reboot_closes_every_socket_of_the_previous_boot(hostfs: Path) -> None:
    before = snapshot({"7": sshd_inbound()})
    after = snapshot({"7": sshd_inbound()}, boot_id="00000000-0000-4000-8000-000000000000")
    events = dataset(hostfs).diff(before, after, at_startup=True)

    assert [event.action for event in events] == ["socket_closed", "socket_opened"]


def test_a_snapshot_of_another_format_is_ignored_with_a_warning(hostfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert dataset(hostfs).diff({"sockets": []}, snapshot({}), at_startup=True) == []
    assert "another format" in caplog.text


# --------------------------------------------------------------------------------------------------------
# Stream folding (apply_stream)
# --------------------------------------------------------------------------------------------------------

def test_destroyed_known_socket_is_closed_with_its_process_traffic_and_duration(hostfs: Path) -> None:
    record = sshd_inbound(opened_at=OBSERVED_AT - 60)
    before = snapshot({"7": record})
    after, events = dataset(hostfs).apply_stream(before, [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55270), 7)])
    [closed] = events

    assert closed.action == SOCKET_CLOSED.name and closed.timestamp == OBSERVED_AT + 5
    assert closed.fields["process"]["pid"] == 22799 and closed.fields["user"]["name"] == "root"
    # inbound: the remote end is the source, so what this host received came from the source
    assert closed.fields["source"] == {"ip": "10.0.2.2", "port": 55270, "bytes": 300, "packets": 9}
    assert closed.fields["destination"] == {"ip": "10.0.2.15", "port": 22, "bytes": 1500, "packets": 12}
    assert closed.fields["client"] == closed.fields["source"] and closed.fields["server"] == closed.fields["destination"]
    assert closed.fields["network"]["bytes"] == 1800 and closed.fields["network"]["packets"] == 21
    assert closed.fields["event"] == {"start": "2023-11-15T03:23:40.123Z", "end": "2023-11-15T03:24:45.123Z",
                                      "duration": 65 * 1_000_000_000}
    assert after["closed"] == ["7"] and before["closed"] == []


def test_outbound_traffic_counts_sent_bytes_from_the_source(hostfs: Path) -> None:
    _, [closed] = dataset(hostfs).apply_stream(snapshot({"2": curl_outbound()}),
                                               [destroyed(("10.0.2.15", 40512), ("93.184.216.34", 443), 2)])

    assert closed.fields["source"]["bytes"] == 1500 and closed.fields["destination"]["bytes"] == 300


def test_a_state_report_carries_the_traffic_of_each_connection_so_far(hostfs: Path) -> None:
    monitored = dataset(hostfs)
    monitored.observer.traffic = lambda: {"7": Traffic(sent_bytes=4096, received_bytes=1 << 20, sent_packets=40,
                                                       received_packets=800)}  # type: ignore[method-assign]
    inbound, listener = monitored.state_report(snapshot({"7": sshd_inbound(), "1": sshd_listener()}))

    assert inbound.fields["source"] == inbound.fields["client"] == {"ip": "10.0.2.2", "port": 55270,
                                                                    "bytes": 1 << 20, "packets": 800}
    assert inbound.fields["destination"] == {"ip": "10.0.2.15", "port": 22, "bytes": 4096, "packets": 40}
    assert (inbound.fields["network"]["bytes"], inbound.fields["network"]["packets"]) == ((1 << 20) + 4096, 840)
    assert "bytes" not in listener.fields["destination"] and "bytes" not in listener.fields["network"]


def test_a_state_report_without_the_kernels_counters_warns_once_and_goes_out(
        hostfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitored = dataset(hostfs)

    def refused() -> dict[str, Traffic]:
        raise DumpError(13, "sock_diag dump failed: Permission denied")
    monitored.observer.traffic = refused  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        reports = [monitored.state_report(snapshot({"7": sshd_inbound()})) for _ in range(2)]

    assert [len(report) for report in reports] == [1, 1] and "bytes" not in reports[0][0].fields["source"]
    assert [record.getMessage() for record in caplog.records].count(
        "Cannot read the TCP counters of the sockets (sock_diag dump failed: Permission denied): state reports "
        "carry no bytes") == 1


def test_the_next_poll_does_not_report_a_socket_the_stream_closed(hostfs: Path) -> None:
    monitored = dataset(hostfs)
    committed, _ = monitored.apply_stream(snapshot({"7": sshd_inbound()}),
                                          [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55270), 7)])

    assert monitored.diff(round_trip(committed), snapshot({}), at_startup=False) == []
    assert monitored.state_report(committed) == []


def test_a_destroy_after_the_poll_reported_the_close_is_not_reported_again(hostfs: Path) -> None:
    monitored = dataset(hostfs)
    [closed] = monitored.diff(snapshot({"7": sshd_inbound()}), snapshot({}), at_startup=False)
    _, late = monitored.apply_stream(snapshot({}), [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55270), 7)])

    assert closed.action == "socket_closed" and late == []


def test_a_socket_never_seen_gets_a_synthesized_open_and_its_close(hostfs: Path) -> None:
    before = snapshot({"1": sshd_listener()})
    after, events = dataset(hostfs).apply_stream(before, [destroyed(("10.0.2.15", 22), ("10.0.2.9", 61000), 42)])

    assert after is before  # nothing of the snapshot closed
    assert [event.action for event in events] == ["socket_opened", "socket_closed"]
    opened, closed = events
    assert opened.fields["system"]["audit"]["socket"] == {
        "cookie": "42", "entity_id": socket_entity_id(HOST_ID, 0, "10.0.2.15", "10.0.2.9", 22, 61000),
        "short_lived": True, "synthesized": True}
    assert closed.fields["system"]["audit"]["socket"]["short_lived"] is True
    assert closed.fields["network"]["direction"] == "inbound"  # by the listener of the snapshot
    assert "user" not in closed.fields and "process" not in closed.fields and "group" not in closed.fields
    assert closed.fields["event"] == {"end": "2023-11-15T03:24:45.123Z"}  # opened since the last poll: when, unknown
    assert closed.fields["error"]["message"].startswith("socket opened and closed between two polls")
    assert closed.message == "Inbound socket (10.0.2.9:61000 -> 10.0.2.15:22) CLOSED"
    assert opened.message == "Inbound socket (10.0.2.9:61000 -> 10.0.2.15:22) OPENED"


def test_a_repeated_notification_is_reported_once(hostfs: Path) -> None:
    item = destroyed(("10.0.2.15", 40000), ("1.1.1.1", 443), 50)
    monitored = dataset(hostfs)
    _, first = monitored.apply_stream(snapshot({}), [item, item])
    _, second = monitored.apply_stream(snapshot({}), [item])

    assert len(first) == 2 and second == []


def test_stream_honours_include_localhost_and_include_udp(hostfs: Path) -> None:
    loopback = destroyed(("127.0.0.1", 40000), ("127.0.0.1", 8080), 60)
    udp = destroyed(("10.0.2.15", 40001), ("10.0.2.3", 53), 61, protocol=socket.IPPROTO_UDP, acked=None,
                    received=None)
    _, default = dataset(hostfs).apply_stream(snapshot({}), [loopback, udp])
    _, everything = dataset(hostfs, include_localhost=True, include_udp=True).apply_stream(snapshot({}),
                                                                                           [loopback, udp])

    assert default == []
    assert [event.fields["network"]["transport"] for event in everything] == ["tcp", "tcp", "udp", "udp"]
    assert "bytes" not in everything[3].fields["source"]


def test_a_never_bound_socket_is_not_reported(hostfs: Path) -> None:
    _, events = dataset(hostfs).apply_stream(snapshot({}), [destroyed(("0.0.0.0", 0), ("0.0.0.0", 0), 70)])
    assert events == []


def test_a_socket_that_changed_endpoints_is_still_closed_by_its_destroy(hostfs: Path) -> None:
    """The poll reports a new-endpoints socket as closed and opened under the same cookie: the socket lives on,
    so its later destroy notification is its one close, not a repeat to drop."""
    unconnected = new_record(UDP, 4, "10.0.2.15", 5000, "0.0.0.0", 0, 77, 0, LISTENING, "", None, 7)
    connected = new_record(UDP, 4, "10.0.2.15", 5000, "10.0.2.3", 53, 77, 0, OUTBOUND, "", None, 1)
    monitored = dataset(hostfs, include_udp=True)
    monitored.diff(snapshot({"5": unconnected}), snapshot({"5": connected}), at_startup=False)
    _, events = monitored.apply_stream(snapshot({"5": connected}), [
        destroyed(("10.0.2.15", 5000), ("10.0.2.3", 53), 5, protocol=socket.IPPROTO_UDP, acked=None, received=None)])

    assert [(event.action, event.fields["network"]["direction"]) for event in events] == [("socket_closed", "outbound")]


def test_stream_before_the_first_poll_still_reports(hostfs: Path) -> None:
    committed, events = dataset(hostfs).apply_stream(None, [destroyed(("10.0.2.15", 40000), ("1.1.1.1", 443), 80)])

    assert committed is None and [event.action for event in events] == ["socket_opened", "socket_closed"]


# --------------------------------------------------------------------------------------------------------
# Attribution memory (SocketObserver over dumps and /proc scans stood in for here)
# --------------------------------------------------------------------------------------------------------

class ScanStandIn:
    """Stands in for SocketOwners: `held` is what a /proc scan would find now (inode -> process)."""

    def __init__(self) -> None:
        self.held: dict[int, ScannedProcess] = {}
        self.forgotten: list[int] = []

    def resolve(self, unknown: set[int]) -> None:
        pass

    def lookup(self, inode: int) -> ScannedProcess | None:
        return self.held.get(inode)

    def forget_inodes(self, inodes: Any) -> None:
        self.forgotten += list(inodes)


def observer(hostfs: Path, dumps: list[list[DiagEntry]]) -> tuple[SocketObserver, ScanStandIn]:
    """An observer whose polls return `dumps` one after the other, with include_udp and include_localhost."""
    watching = SocketObserver(hostfs, SocketOptions(include_localhost=True, include_udp=True))
    scans = ScanStandIn()
    watching.owners = scans
    queue = iter(dumps)
    watching._dumps = lambda: [(UDP, next(queue))]  # type: ignore[method-assign]
    return watching, scans


def udp_entry(remote: tuple[str, int], inode: int = 77, uid: int = 1000, cookie: int = 5) -> DiagEntry:
    """A UDP socket bound to 10.0.2.15:5000 (state CLOSE when unconnected, as the kernel lists it)."""
    state = TCP_CLOSE if remote[1] == 0 else TCP_ESTABLISHED
    sockid = kernel_sockid(socket.AF_INET, 5000, remote[1], "10.0.2.15", remote[0], cookie)
    return DiagEntry(sockid, socket.AF_INET, state, uid, inode)


DIG = ScannedProcess(4321, 99, "dig", "/usr/bin/dig", 0, {77}, ppid=4000, args=("dig", "example.com"), gid="1000")


def test_a_socket_keeps_the_process_of_its_inode_after_the_process_exited(hostfs: Path) -> None:
    """A UDP socket connects (new endpoints: a new record) and its process exits before the poll can attribute the
    new record: the process that held the inode is kept, not lost."""
    unconnected, connected = udp_entry(("0.0.0.0", 0)), udp_entry(("10.0.2.3", 53))
    watching, scans = observer(hostfs, [[unconnected], [connected]])
    scans.held = {77: DIG}
    before = watching.observe()
    scans.held = {}  # dig exited between the dump and the /proc scan
    after = watching.observe()
    [record] = after["sockets"].values()

    assert record[R_PROCESS] == DIG.key and after["processes"][DIG.key] == [
        4321, 99, "dig", "/usr/bin/dig", ["dig", "example.com"], 4000, "1000"]
    assert 77 not in scans.forgotten  # the inode lives on in the new record
    events = dataset(hostfs).diff(round_trip(before), round_trip(after), at_startup=False)
    assert [(event.action, event.fields["process"]["pid"]) for event in events] == [
        (SOCKET_CLOSED.name, 4321), (SOCKET_OPENED.name, 4321)]
    assert events[1].fields["process"]["args"] == ["dig", "example.com"]
    assert events[1].fields["process"]["parent"] == {"pid": 4000}
    assert events[1].fields["group"] == {"id": "1000", "name": "alice"}
    assert events[1].message == ("Outbound socket (10.0.2.15:5000 -> 10.0.2.3:53) OPENED by process dig (PID: 4321) "
                                 "and user alice (UID: 1000)")


def test_an_inode_never_attributed_stays_without_process_but_keeps_its_user(hostfs: Path) -> None:
    watching, _ = observer(hostfs, [[udp_entry(("10.0.2.3", 53))]])
    [event] = dataset(hostfs).state_report(watching.observe())

    assert "process" not in event.fields and event.fields["user"] == {"id": "1000", "name": "alice"}
    assert event.message == "Outbound socket (10.0.2.15:5000 -> 10.0.2.3:53) OPEN by user alice (UID: 1000)"


def test_the_attribution_of_an_inode_is_forgotten_when_its_socket_is_gone(hostfs: Path) -> None:
    """Once no dumped socket has the inode it is forgotten: a later socket given the same inode number is not
    taken for the old process's."""
    first, reused = udp_entry(("10.0.2.3", 53)), udp_entry(("10.0.2.4", 53), cookie=6)
    watching, scans = observer(hostfs, [[first], [], [reused]])
    scans.held = {77: DIG}
    watching.observe()
    scans.held = {}
    watching.observe()  # the socket is gone
    [record] = watching.observe()["sockets"].values()

    assert 77 in scans.forgotten and record[R_PROCESS] == ""


def polled_dataset(hostfs: Path, dumps: list[list[DiagEntry]]) -> SocketDataset:
    """A dataset whose polls return `dumps` (UDP) one after the other and find no process."""
    monitored = dataset(hostfs, include_localhost=True, include_udp=True)
    monitored.observer.owners = ScanStandIn()  # type: ignore[assignment]
    queue = iter(dumps)
    monitored.observer._dumps = lambda: [(UDP, next(queue))]  # type: ignore[method-assign]
    return monitored


def udp_destroyed(entry: DiagEntry) -> Destroyed:
    endpoints = decode_sockid(entry.family, entry.sockid)
    return destroyed((endpoints.local_ip, endpoints.local_port), (endpoints.remote_ip, endpoints.remote_port),
                     endpoints.cookie, protocol=socket.IPPROTO_UDP, acked=None, received=None)


def test_a_socket_the_stream_closed_is_not_opened_again_by_a_dump_that_still_lists_it(hostfs: Path) -> None:
    """One close per socket, whichever path sees it first: were a dump to list a socket after its destroy
    notification (the kernel's timewait remains keep the cookie), the polls neither open it again nor close it
    a second time."""
    entry = udp_entry(("10.0.2.3", 53))
    monitored = polled_dataset(hostfs, [[entry], [entry], [entry], []])
    first = monitored.observe()
    committed, streamed = monitored.apply_stream(first, [udp_destroyed(entry)])
    polls = [committed]
    for _ in range(3):
        polls.append(monitored.observe())
    later = [event for before, after in zip(polls, polls[1:])
             for event in monitored.diff(round_trip(before), after, at_startup=False)]

    assert [event.action for event in streamed] == ["socket_closed"]
    assert later == [] and all(monitored.state_report(poll) == [] for poll in polls)


def test_a_destroy_notification_after_the_polls_close_is_dropped_and_the_cookie_not_reopened(hostfs: Path) -> None:
    entry = udp_entry(("10.0.2.3", 53))
    monitored = polled_dataset(hostfs, [[entry], [], [entry]])
    first = monitored.observe()
    gone = monitored.observe()
    [closed] = monitored.diff(first, gone, at_startup=False)
    _, late = monitored.apply_stream(gone, [udp_destroyed(entry)])

    assert closed.action == "socket_closed" and late == []
    assert monitored.diff(gone, monitored.observe(), at_startup=False) == []


def test_closed_cookie_memory_is_bounded() -> None:
    memory = ClosedCookies(capacity=2)
    for key in ("1", "2", "3"):
        memory.add(key, by_stream=key != "2")

    assert "1" not in memory and "2" in memory and "3" in memory
    assert memory.take_closed_by_stream() == {"1", "3"} and memory.take_closed_by_stream() == set()


def test_attribution_memory_is_bounded(hostfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket_dataset, "ATTRIBUTION_MEMORY", 2)
    entries = [udp_entry(("10.0.2.3", 53), inode=inode, cookie=inode) for inode in (71, 72, 73)]
    watching, scans = observer(hostfs, [entries])
    scans.held = {inode: ScannedProcess(inode, 1, f"p{inode}", "", 0, {inode}) for inode in (71, 72, 73)}
    watching.observe()

    assert list(watching._attributed) == [72, 73]


# --------------------------------------------------------------------------------------------------------
# Attribution over a synthetic /proc (SocketOwners)
# --------------------------------------------------------------------------------------------------------

def fake_process(hostfs: Path, pid: int, comm: str, exe: str, inodes: list[int], cmdline: bytes | None,
                 status: str | None, ppid: int = 1, ticks: int = 5000) -> None:
    """/proc/PID under hostfs: stat, an exe link, fd/ links to socket inodes, and cmdline / status when given."""
    base = hostfs / "proc" / str(pid)
    (base / "fd").mkdir(parents=True, exist_ok=True)
    (base / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 " + "0 " * 12 + f"{ticks} 0 0\n")
    for name in ("exe", *(f"fd/{number}" for number in range(3, 3 + len(inodes)))):
        (base / name).unlink(missing_ok=True)
    (base / "exe").symlink_to(exe)
    for number, inode in enumerate(inodes, start=3):
        (base / "fd" / str(number)).symlink_to(f"socket:[{inode}]")
    for name, content in (("cmdline", cmdline), ("status", None if status is None else status.encode())):
        if content is None:
            (base / name).unlink(missing_ok=True)
        else:
            (base / name).write_bytes(content)


STATUS = "Name:\tnginx\nUid:\t33\t33\t33\t33\nGid:\t1000\t1000\t1000\t1000\n"


def test_a_scan_reads_the_args_parent_and_group_of_a_process_holding_sockets(hostfs: Path) -> None:
    fake_process(hostfs, 700, "nginx", "/usr/sbin/nginx", [9001], b"nginx: worker process\0", STATUS, ppid=690)
    fake_process(hostfs, 701, "sleep", "/usr/bin/sleep", [], b"sleep\0600\0", STATUS)
    owners = SocketOwners(hostfs, full_scan_interval=3600)
    owners.resolve({9001, 9999})  # 9999 is nowhere: every process is scanned
    holder = owners.lookup(9001)

    assert holder is not None and (holder.pid, holder.ppid, holder.args, holder.gid) == (
        700, 690, ("nginx: worker process",), "1000")
    assert holder.info() == [700, 5000, "nginx", "/usr/sbin/nginx", ["nginx: worker process"], 690, "1000"]
    assert owners.processes[701].args is None  # holds no socket: its cmdline is not read


def test_args_and_group_are_read_once_per_process_image(hostfs: Path) -> None:
    fake_process(hostfs, 700, "nginx", "/usr/sbin/nginx", [9001], b"nginx: master\0", STATUS)
    owners = SocketOwners(hostfs, full_scan_interval=0)
    owners.resolve({9001})
    fake_process(hostfs, 700, "nginx", "/usr/sbin/nginx", [9001, 9002], b"nginx: renamed title\0", STATUS)
    owners.resolve({9002})  # rescanned: the same image keeps what was read
    same_image = owners.lookup(9002)
    fake_process(hostfs, 700, "python3", "/usr/bin/python3", [9001, 9002, 9003], b"python3\0app.py\0", STATUS)
    owners.resolve({9003})  # exec'd another image: read again

    assert same_image is not None and same_image.args == ("nginx: master",)
    assert owners.lookup(9003).args == ("python3", "app.py")  # type: ignore[union-attr]


def test_a_process_whose_cmdline_and_status_are_gone_is_named_without_them(hostfs: Path) -> None:
    fake_process(hostfs, 700, "nginx", "/usr/sbin/nginx", [9001], None, None)
    owners = SocketOwners(hostfs, full_scan_interval=3600)
    owners.resolve({9001})
    holder = owners.lookup(9001)

    assert holder is not None and (holder.name, holder.args, holder.gid) == ("nginx", None, None)
    assert holder.info()[PI_ARGS:] == [None, 1, None]


# --------------------------------------------------------------------------------------------------------
# Netlink parsing (kernel layouts built here byte by byte)
# --------------------------------------------------------------------------------------------------------

def kernel_sockid(family: int, sport: int, dport: int, src: str, dst: str, cookie: int) -> bytes:
    def raw(address: str) -> bytes:
        packed = socket.inet_pton(family, address)
        return packed + b"\x00" * (16 - len(packed))
    return (struct.pack(">HH", sport, dport) + raw(src) + raw(dst) + struct.pack("=I", 0)
            + struct.pack("=II", cookie & 0xFFFFFFFF, cookie >> 32))


def kernel_message(kind: int, sequence: int, body: bytes) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 2, sequence, 0) + body + b"\x00" * (-length % 4)


def inet_diag_msg(family: int, state: int, sockid: bytes, uid: int, inode: int, attributes: bytes = b"",
                  timer: int = 0) -> bytes:
    return (struct.pack("=BBBB", family, state, timer, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, uid, inode)
            + attributes)


def attribute(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\x00" * (-len(payload) % 4)


def test_dump_request_is_an_inet_diag_req_v2() -> None:
    request = dump_request(socket.AF_INET6, socket.IPPROTO_TCP, 0xABC, 7)

    assert len(request) == 16 + 56
    assert struct.unpack_from("=IHHII", request) == (72, SOCK_DIAG_BY_FAMILY, 0x301, 7, 0)
    assert struct.unpack_from("=BBBxI", request, 16) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 0xABC)


def test_parse_dump_reads_entries_until_done() -> None:
    sockid = kernel_sockid(socket.AF_INET, 22, 55270, "10.0.2.15", "10.0.2.2", (5 << 32) | 9)
    data = (kernel_message(SOCK_DIAG_BY_FAMILY, 3, inet_diag_msg(socket.AF_INET, TCP_ESTABLISHED, sockid, 0, 4242,
                                                                 attribute(8, b"\x00")))
            + kernel_message(SOCK_DIAG_BY_FAMILY, 2, inet_diag_msg(socket.AF_INET, 1, sockid, 0, 1))  # stale seq
            + kernel_message(NLMSG_DONE, 3, struct.pack("=i", 0)))
    entries: list = []

    assert parse_dump(data, 3, entries) is True
    [entry] = entries
    assert (entry.family, entry.state, entry.uid, entry.inode) == (socket.AF_INET, TCP_ESTABLISHED, 0, 4242)
    assert decode_sockid(entry.family, entry.sockid) == (22, 55270, "10.0.2.15", "10.0.2.2", 0, (5 << 32) | 9)


def test_parse_dump_skips_timewait_remains_of_destroyed_sockets() -> None:
    """A socket closed in FIN_WAIT2 leaves a timewait minisocket the kernel dumps as FIN_WAIT2 (its substate), with
    the destroyed socket's cookie, no inode and uid 0, and idiag_timer 3; a live orphan in FIN_WAIT2 has timer 2."""
    remains = kernel_sockid(socket.AF_INET, 40000, 443, "10.0.2.15", "1.1.1.1", 11)
    orphan = kernel_sockid(socket.AF_INET, 40001, 443, "10.0.2.15", "1.1.1.1", 12)
    data = (kernel_message(SOCK_DIAG_BY_FAMILY, 5, inet_diag_msg(socket.AF_INET, TCP_FIN_WAIT2, remains, 0, 0,
                                                                 timer=TIMEWAIT_TIMER))
            + kernel_message(SOCK_DIAG_BY_FAMILY, 5, inet_diag_msg(socket.AF_INET, TCP_FIN_WAIT2, orphan, 0, 0,
                                                                   timer=2))
            + kernel_message(NLMSG_DONE, 5, struct.pack("=i", 0)))
    entries: list = []

    assert parse_dump(data, 5, entries) is True
    assert [decode_sockid(entry.family, entry.sockid).cookie for entry in entries] == [12]


def test_parse_dump_maps_each_sockid_to_its_tcp_counters_when_asked() -> None:
    tcp_info = bytearray(232)
    struct.pack_into("=QQII", tcp_info, 120, 1 << 20, 4096, 800, 40)
    with_info = kernel_sockid(socket.AF_INET, 40000, 443, "10.0.2.15", "1.1.1.1", 21)
    old_kernel = kernel_sockid(socket.AF_INET, 40001, 443, "10.0.2.15", "1.1.1.1", 22)
    data = (kernel_message(SOCK_DIAG_BY_FAMILY, 6, inet_diag_msg(socket.AF_INET, TCP_ESTABLISHED, with_info, 0, 5,
                                                                 attribute(INET_DIAG_INFO, bytes(tcp_info))))
            + kernel_message(SOCK_DIAG_BY_FAMILY, 6, inet_diag_msg(socket.AF_INET, TCP_ESTABLISHED, old_kernel, 0, 6,
                                                                   attribute(INET_DIAG_INFO, bytes(104))))
            + kernel_message(NLMSG_DONE, 6, struct.pack("=i", 0)))
    entries: list = []
    counters: dict = {}

    assert parse_dump(data, 6, entries, counters) is True
    assert len(entries) == 2 and counters == {with_info: (1 << 20, 4096, 800, 40)}
    request = dump_request(socket.AF_INET, socket.IPPROTO_TCP, 0xABC, 7, INET_DIAG_INFO_EXTENSION)
    assert struct.unpack_from("=BBB", request, 16)[2] == 1 << (INET_DIAG_INFO - 1)  # idiag_ext asks for tcp_info


def test_parse_dump_raises_the_kernels_error() -> None:
    data = kernel_message(NLMSG_ERROR, 4, struct.pack("=i", -13) + b"\x00" * 16)
    with pytest.raises(DumpError) as raised:
        parse_dump(data, 4, [])
    assert raised.value.errno == 13


def test_ipv4_mapped_addresses_are_written_as_ipv4() -> None:
    sockid = kernel_sockid(socket.AF_INET6, 8080, 50000, "::ffff:127.0.0.1", "::1", 1)
    endpoints = decode_sockid(socket.AF_INET6, sockid)

    assert (endpoints.local_ip, endpoints.remote_ip) == ("127.0.0.1", "::1")


def test_parse_destroyed_reads_protocol_and_tcp_info_counters() -> None:
    tcp_info = bytearray(232)
    struct.pack_into("=QQII", tcp_info, 120, 1500, 300, 12, 9)
    sockid = kernel_sockid(socket.AF_INET6, 443, 50000, "2001:db8::1", "2001:db8::2", 77)
    body = inet_diag_msg(socket.AF_INET6, 7, sockid, 0, 0, attribute(10, bytes([6])) + attribute(2, bytes(tcp_info)))
    [item] = parse_destroyed(kernel_message(SOCK_DIAG_BY_FAMILY, 0, body), at=12.5)

    assert item == Destroyed(socket.AF_INET6, socket.IPPROTO_TCP, 7, "2001:db8::1", 443, "2001:db8::2", 50000, 77,
                             12.5, 1500, 300, 12, 9)


def test_udp_destroy_has_no_counters() -> None:
    sockid = kernel_sockid(socket.AF_INET, 5353, 0, "10.0.2.15", "0.0.0.0", 78)
    body = inet_diag_msg(socket.AF_INET, 7, sockid, 0, 0, attribute(10, bytes([17])))
    [item] = parse_destroyed(kernel_message(SOCK_DIAG_BY_FAMILY, 0, body), at=1.0)

    assert item.protocol == socket.IPPROTO_UDP and item.bytes_acked is None


def test_tcp_info_from_an_old_kernel_is_too_short_for_counters() -> None:
    assert parse_tcp_info(bytes(104)) is None


# --------------------------------------------------------------------------------------------------------
# /proc and /etc parsing
# --------------------------------------------------------------------------------------------------------

def test_user_names_take_the_first_entry_of_a_uid(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("# comment\nroot:x:0:0::/:/bin/sh\ntoor:x:0:0::/:/bin/sh\n"
                                            "+nis::::::\nbad line\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\n")
    names = AccountNames(tmp_path)
    assert (names.user(0), names.user("0"), names.user(1), names.group(0)) == ("root", "root", None, "root")


def test_registry_style_construction(hostfs: Path) -> None:
    assert isinstance(socket_dataset.create(DatasetContext(hostfs=hostfs)), SocketDataset)


# --------------------------------------------------------------------------------------------------------
# Sample document
# --------------------------------------------------------------------------------------------------------

def sample_document(hostfs: Path) -> dict[str, Any]:
    """The `socket_closed` document of Auditbeat's documented sshd connection (Auditbeat's v1 sample is a close),
    as the runtime writes it: seen opening by a poll, closed by the kernel's destroy notification (traffic)."""
    common = sample_common({"id": HOST_ID, "name": "ubuntu-jammy", "hostname": "ubuntu-jammy", "architecture": "x86_64"})
    seen = snapshot({"1": sshd_listener(), "7": sshd_inbound(opened_at=OBSERVED_AT - 95)})
    _, [closed] = dataset(hostfs).apply_stream(seen, [destroyed(("10.0.2.15", 22), ("10.0.2.2", 55270), 7)])
    return closed.stamped(1).to_document(common)


def test_sample_document_has_the_fields_we_emit(hostfs: Path) -> None:
    generated = sample_document(hostfs)
    if os.environ.get("HOSTAUDIT_UPDATE_SAMPLES") == "1":
        SAMPLE.parent.mkdir(parents=True, exist_ok=True)
        SAMPLE.write_text(json.dumps(generated, indent=2) + "\n")

    sample = json.loads(SAMPLE.read_text())

    assert flat_field_names(generated) == flat_field_names(sample)
    assert sample["message"] == generated["message"]
    assert sample["event"]["action"] == "socket_closed"
    assert_ecs(sample, EVENT_FIELDS)


# --- the kernel-side loopback filters, run by small models of the kernel's interpreters ------------------------

def _run_inet_diag_bytecode(program: bytes, family: int, source: bytes, destination: bytes) -> bool:
    """inet_diag_bc_run for S_COND/D_COND (any port) and JMP, as net/ipv4/inet_diag.c runs it: True = dumped."""
    from actors.datasets.socket.sock_diag import INET_DIAG_BC_D_COND, INET_DIAG_BC_JMP, INET_DIAG_BC_S_COND

    def matches(address: bytes, cond_family: int, prefix: int, cond_address: bytes) -> bool:
        if cond_family != family:
            if family == socket.AF_INET6 and cond_family == socket.AF_INET and address[:12] == b"\0" * 10 + b"\xff" * 2:
                address = address[12:]
            else:
                return False
        bits = "".join(f"{byte:08b}" for byte in address)[:prefix]
        return bits == "".join(f"{byte:08b}" for byte in cond_address)[:prefix]

    offset, remaining = 0, len(program)
    while remaining > 0:
        code, yes, no = struct.unpack_from("=BBH", program, offset)
        if code == INET_DIAG_BC_JMP:
            matched = False
        else:
            assert code in (INET_DIAG_BC_S_COND, INET_DIAG_BC_D_COND)
            cond_family, prefix, port = struct.unpack_from("=BBxxi", program, offset + 4)
            assert port == -1
            size = 4 if cond_family == socket.AF_INET else 16
            matched = matches(source if code == INET_DIAG_BC_S_COND else destination, cond_family, prefix,
                              program[offset + 12:offset + 12 + size])
        step = yes if matched else no
        offset, remaining = offset + step, remaining - step
    return remaining == 0


def _run_socket_filter(code: bytes, packet: bytes) -> bool:
    """Classic BPF for the opcodes not_loopback_socket_filter uses: True = the notification is queued."""
    instructions = [struct.unpack_from("=HBBI", code, at) for at in range(0, len(code), 8)]
    accumulator, index = 0, 0
    while True:
        kind, true, false, k = instructions[index]
        index += 1
        if kind == 0x30:  # ld b [k]
            accumulator = packet[k]
        elif kind == 0x20:  # ld w [k], network order
            accumulator = struct.unpack_from(">I", packet, k)[0]
        elif kind == 0x54:  # and #k
            accumulator &= k
        elif kind == 0x15:  # jeq #k
            index += true if accumulator == k else false
        elif kind == 0x06:  # ret #k
            return k != 0
        else:
            raise AssertionError(f"unexpected opcode {kind:#x}")


LOOPBACK_CASES = [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1", False), (socket.AF_INET, "127.1.2.3", "0.0.0.0", False),
    (socket.AF_INET, "10.0.0.5", "127.0.0.1", False), (socket.AF_INET, "10.0.0.5", "192.0.2.9", True),
    (socket.AF_INET, "0.0.0.0", "0.0.0.0", True), (socket.AF_INET6, "::1", "::1", False),
    (socket.AF_INET6, "::", "::", True), (socket.AF_INET6, "fd00::2", "::1", False),
    (socket.AF_INET6, "::ffff:127.0.0.1", "::ffff:127.0.0.1", False),
    (socket.AF_INET6, "::ffff:10.0.0.1", "::", True),
    (socket.AF_INET6, "fd00::2", "2001:db8::1", True), (socket.AF_INET6, "::2", "::", True),
]


def _address(family: int, text: str) -> bytes:
    """The 16 bytes of an inet_diag_sockid address (IPv4 in the first 4)."""
    return socket.inet_pton(family, text).ljust(16, b"\0")


@pytest.mark.parametrize("family, source, destination, kept", LOOPBACK_CASES)
def test_the_dump_filter_leaves_out_exactly_the_loopback_sockets(family: int, source: str, destination: str,
                                                                 kept: bool) -> None:
    from actors.datasets.socket.sock_diag import not_loopback_bytecode

    assert _run_inet_diag_bytecode(not_loopback_bytecode(), family, _address(family, source),
                                   _address(family, destination)) is kept


@pytest.mark.parametrize("family, source, destination, kept", LOOPBACK_CASES)
def test_the_destroy_filter_drops_exactly_the_loopback_sockets(family: int, source: str, destination: str,
                                                               kept: bool) -> None:
    from actors.datasets.socket.sock_diag import not_loopback_socket_filter

    notification = (struct.pack("=IHHII", 88, SOCK_DIAG_BY_FAMILY, 0, 0, 0) + struct.pack("=BBBB", family, 7, 0, 0)
                    + struct.pack(">HH", 5000, 6000) + _address(family, source) + _address(family, destination)
                    + b"\0" * 12 + b"\0" * 20)
    assert _run_socket_filter(not_loopback_socket_filter(), notification) is kept
