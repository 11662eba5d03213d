"""The socket dataset through the whole agent: real loopback connections, with process, user and direction."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.agent_harness import wait_for

SOCKET_ONLY = ("hostaudit.modules=[{module: system, datasets: [socket], period: 1s, "
               "socket.include_localhost: true}]")


def test_listener_and_connections_are_reported_with_direction_process_and_user(agent_factory) -> None:
    agent = agent_factory(overrides=(SOCKET_ONLY,))
    agent.wait_for_role("socket", 10)
    agent.wait_for_event(lambda e: e["event"]["dataset"] == "socket", 15, "the socket state report")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    client_port = client.getsockname()[1]
    try:
        def opened(direction: str) -> dict | None:
            return next((e for e in agent.events() if e["event"]["action"] == "socket_opened"
                         and e["network"]["direction"] == direction
                         and port in (e.get("destination", {}).get("port"), e.get("source", {}).get("port"))),
                        None)

        listening = agent.wait_for_event(
            lambda e: e["event"]["action"] == "socket_opened" and e["network"]["direction"] == "listening"
            and e["destination"]["port"] == port, 10, "the listener")
        outbound = wait_for(lambda: opened("outbound"), 10, "the outbound connection")
        inbound = wait_for(lambda: opened("inbound"), 10, "the inbound connection")
        for event in (listening, outbound, inbound):
            assert event["process"]["pid"] == os.getpid()
            assert event["user"]["id"] == "0" and event["user"]["name"] == "root"
            assert event["network"]["transport"] == "tcp" and event["event"]["category"] == ["network"]
        assert (outbound["source"]["port"], outbound["destination"]["port"]) == (client_port, port)
        assert (inbound["source"]["port"], inbound["destination"]["port"]) == (client_port, port)
        assert outbound["message"].startswith(f"Outbound socket (127.0.0.1:{client_port} -> 127.0.0.1:{port}) "
                                              f"OPENED by process")
    finally:
        for sock in (client, server_side, listener):
            sock.close()
    agent.wait_for_event(lambda e: e["event"]["action"] == "socket_closed" and e["network"]["direction"] == "outbound"
                         and e["destination"]["port"] == port, 10, "the outbound connection closed")


def test_connections_shorter_than_a_period_are_all_reported_closed(agent_factory) -> None:
    agent = agent_factory(overrides=(SOCKET_ONLY,))
    agent.wait_for_event(lambda e: e["event"]["dataset"] == "socket", 15, "the socket state report")
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]
    client_ports = set()
    try:
        for _ in range(1000):
            client = socket.create_connection(("127.0.0.1", port))
            client_ports.add(client.getsockname()[1])
            accepted, _ = listener.accept()
            client.close()
            accepted.close()
    finally:
        listener.close()

    def closed_client_ports() -> set[int]:
        return {e["source"]["port"] for e in agent.events() if e["event"]["action"] == "socket_closed"
                and e.get("destination", {}).get("port") == port and "source" in e}

    wait_for(lambda: client_ports <= closed_client_ports(), 30, "a socket_closed for each of 1,000 connections")


SESSION = ("hostaudit.modules=[{module: system, datasets: [socket], period: 1s, state.period: 2s, "
           "socket.include_localhost: true}]")


def cookie(event: dict) -> str:
    return event["system"]["audit"]["socket"]["cookie"]


def test_a_loopback_session_through_the_agent_reports_each_socket_once_with_its_fields(agent_factory) -> None:
    """Issue 14 through the whole agent: a loopback listener, a 1 MB upload on a connection that lives across
    state reports, and a short connection from a child that exits while this end stays open (its timewait
    remains are still listed as FIN_WAIT2); then everything closes."""
    agent = agent_factory(overrides=(SESSION,))
    agent.wait_for_event(lambda e: e["event"]["dataset"] == "socket", 15, "the socket state report")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client_port = client.getsockname()[1]
    sockets = [client, server, listener]
    try:
        client.sendall(b"u" * (1 << 20))
        received = 0
        while received < 1 << 20:
            received += len(server.recv(1 << 16))
        state = agent.wait_for_event(
            lambda e: e["event"]["action"] == "existing_socket" and e.get("client", {}).get("port") == client_port
            and e["network"]["direction"] == "outbound" and e["source"].get("bytes", 0) >= 1 << 20, 15,
            "a state report with the upload's bytes")
        child = subprocess.run([sys.executable, "-c", f"import socket; c = socket.create_connection(('127.0.0.1', "
                                f"{port})); c.sendall(b'hello'); print(c.getsockname()[1])"],
                               capture_output=True, text=True, timeout=30, check=True)
        child_port = int(child.stdout)
        child_server, _ = listener.accept()
        sockets.append(child_server)
        assert child_server.recv(5) == b"hello"
        # this end stays open across polls while the child's end is gone
        agent.wait_for_event(lambda e: e["event"]["action"] == "socket_closed"
                             and e.get("source", {}).get("port") == child_port
                             and e["network"]["direction"] == "outbound", 15, "the child's end closed")
        first_report = state["system"]["audit"]["report"]["id"]
        agent.wait_for_event(lambda e: e["event"]["action"] == "existing_socket"
                             and e["system"]["audit"]["report"]["id"] != first_report
                             and e.get("destination", {}).get("port") == port
                             and e.get("source", {}).get("port") == child_port, 15,
                             "a state report listing this end of the child's connection")
    finally:
        for sock in sockets:
            sock.close()
    ports = {port, client_port, child_port}

    def session() -> list[dict]:
        return [e for e in agent.events() if e["event"]["dataset"] == "socket"
                and {e.get("source", {}).get("port"), e.get("destination", {}).get("port")} & ports]

    def all_closed() -> bool:
        events = session()
        closed = {cookie(e) for e in events if e["event"]["action"] == "socket_closed"}
        return {cookie(e) for e in events} <= closed and len(closed) == 5  # listener, 2 + 2 connection ends
    wait_for(all_closed, 15, "a close for each of the session's sockets")
    last = max(e["event"]["sequence"] for e in session())
    agent.wait_for_event(lambda e: e["event"]["action"] == "existing_socket" and e["event"]["sequence"] > last
                         and e["system"]["audit"]["report"]["id"] not in {
                             x["system"]["audit"]["report"]["id"] for x in session()
                             if x["event"]["action"] == "existing_socket"}, 15,
                         "a state report after the closes")
    events = session()

    for key in {cookie(e) for e in events}:
        actions = [e["event"]["action"] for e in events if cookie(e) == key]
        assert actions.count("socket_closed") == 1 and actions.count("socket_opened") <= 1, (key, actions)
        assert actions.index("socket_closed") == len(actions) - 1, (key, actions)  # nothing of it after its close
    reports: dict[str, list[str]] = {}
    for e in events:
        if e["event"]["action"] == "existing_socket":
            reports.setdefault(e["system"]["audit"]["report"]["id"], []).append(cookie(e))
    assert all(len(cookies) == len(set(cookies)) for cookies in reports.values())
    for e in events:
        assert "-1" not in e["message"] and "  " not in e["message"] and " ()" not in e["message"], e["message"]
        if "process" in e:
            assert e["process"]["pid"] > 0 and e["process"].get("name") and e["group"]["id"] == "0"
        if "user" in e:
            assert e["user"] == {"id": "0", "name": "root"}
    [outbound_close] = [e for e in events if e["event"]["action"] == "socket_closed"
                        and e["network"]["direction"] == "outbound" and e["client"]["port"] == client_port]
    assert outbound_close["process"]["pid"] == os.getpid() and outbound_close["process"]["args"]
    assert outbound_close["process"]["parent"]["pid"] == os.getppid() and outbound_close["process"]["start"]
    assert outbound_close["client"]["bytes"] >= 1 << 20 and outbound_close["server"]["port"] == port
    assert outbound_close["event"]["start"] < outbound_close["event"]["end"]
