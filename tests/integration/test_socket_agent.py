"""The socket dataset through the whole agent: real loopback connections, with process, user and direction."""

from __future__ import annotations

import os
import socket

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
