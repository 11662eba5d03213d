"""Benchmark of the socket dataset: steady-state poll CPU against `ss -tanp`, and short-lived capture via the stream."""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors.datasets import DatasetContext  # noqa: E402
from actors.datasets.socket.dataset import SOCKET_CLOSED, SocketDataset  # noqa: E402
from actors.datasets.socket.sock_diag import Destroyed  # noqa: E402
from cpu import cpu_children, cpu_self  # noqa: E402  (ops/bench/cpu.py)
import audit_state  # noqa: E402  (ops/bench/audit_state.py)

LOOPBACK = "127.0.0.1"
LISTENERS = 4  # spread the clients over a few server ports
ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0}: close with RST, no TIME_WAIT left behind


def raise_open_files(needed: int) -> None:
    """Raise RLIMIT_NOFILE to `needed` (the hard limit too when allowed: CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < needed:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} and cannot be raised")


def machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


class Connections:
    """Listeners on loopback in this process, the accepted sides here, and the client sides in a child process
    (one process could not hold both: RLIMIT_NOFILE's hard limit may be 20,000 without CAP_SYS_RESOURCE)."""

    def __init__(self, listeners: int = LISTENERS) -> None:
        self.listeners = []
        for _ in range(listeners):
            listener = socket.socket()
            listener.bind((LOOPBACK, 0))
            listener.listen(4096)
            self.listeners.append(listener)
        self.accepted: list[socket.socket] = []
        self.clients: subprocess.Popen[str] | None = None

    def open_pairs(self, count: int) -> None:
        """Have a child connect `count` clients (spread over the listeners) while this process accepts them."""
        raise_open_files(count + 4096)
        ports = ",".join(str(listener.getsockname()[1]) for listener in self.listeners)
        self.clients = subprocess.Popen([sys.executable, __file__, "--hold-clients", ports, str(count)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        per_listener = [count // len(self.listeners) + (index < count % len(self.listeners))
                        for index in range(len(self.listeners))]
        threads = [threading.Thread(target=self._accept, args=(listener, wanted))
                   for listener, wanted in zip(self.listeners, per_listener)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert self.clients.stdout is not None and self.clients.stdout.readline().strip() == "ready"

    def _accept(self, listener: socket.socket, wanted: int) -> None:
        for _ in range(wanted):
            server, _ = listener.accept()
            self.accepted.append(server)

    def close(self) -> None:
        if self.clients is not None:
            self.clients.communicate(timeout=60)  # closing its stdin tells it to close its sockets and exit
            self.clients = None
        for server in self.accepted:
            server.close()
        self.accepted.clear()
        for listener in self.listeners:
            listener.close()


def hold_clients(ports: list[int], count: int) -> None:
    """Child process: connect `count` clients round-robin to `ports`, say "ready", hold them until stdin closes."""
    raise_open_files(count + 1024)
    clients = []
    for index in range(count):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
        client.connect((LOOPBACK, ports[index % len(ports)]))
        clients.append(client)
    print("ready", flush=True)
    sys.stdin.read()
    for client in clients:
        client.close()


def measure(action: Callable[[], Any], clock: Callable[[], float]) -> float:
    before = clock()
    action()
    return clock() - before


def steady_state(pairs: int, runs: int) -> dict[str, Any]:
    """CPU of one poll (observe + diff) with `pairs` established pairs, beside `ss -tan` and `ss -tanp`."""
    connections = Connections()
    try:
        connections.open_pairs(pairs)
        dataset = SocketDataset(DatasetContext(hostfs=Path("/"), options={"include_localhost": True},
                                               host_id=machine_id()))
        started = cpu_self()
        previous = dataset.observe()
        cold = cpu_self() - started
        polls, ss_plain, ss_processes = [], [], []
        for _ in range(runs):
            def poll() -> None:
                nonlocal previous
                current = dataset.observe()
                dataset.diff(previous, current, False)
                previous = current
            polls.append(measure(poll, cpu_self))
            ss_processes.append(measure(lambda: subprocess.run(["ss", "-tanp"], stdout=subprocess.DEVNULL,
                                                               check=True), cpu_children))
            ss_plain.append(measure(lambda: subprocess.run(["ss", "-tan"], stdout=subprocess.DEVNULL, check=True),
                                    cpu_children))
        sockets = len(previous["sockets"])
        encoded = json.dumps(previous)
        restored = json.loads(encoded)
        after_restart = measure(lambda: dataset.diff(restored, dataset.observe(), True), cpu_self)
        state_report = measure(lambda: dataset.state_report(previous), cpu_self)
        dataset.close()
        return {"sockets": sockets, "cold": cold, "poll": statistics.median(polls),
                "ss_tan": statistics.median(ss_plain), "ss_tanp": statistics.median(ss_processes),
                "snapshot_bytes": len(encoded), "runs": runs, "after_restart": after_restart,
                "state_report": state_report}
    finally:
        connections.close()


def short_lived(count: int, deadline_seconds: float = 20.0) -> dict[str, Any]:
    """Open and close `count` connections at full speed; how many of their sockets the stream reports closed."""
    dataset = SocketDataset(DatasetContext(hostfs=Path("/"), options={"include_localhost": True},
                                           host_id=machine_id()))
    stream = dataset.open_stream()
    if stream is None:
        raise SystemExit("the destroy stream is unavailable (needs CAP_NET_ADMIN): run as root")
    connections = Connections(listeners=1)
    received: list[Destroyed] = []
    stop = threading.Event()

    def reader() -> None:  # as the runtime does: a dedicated thread reading batches
        while not stop.is_set():
            received.extend(stream.read(0.1))

    thread = threading.Thread(target=reader, daemon=True)
    try:
        snapshot = dataset.observe()  # the listener is known, so the accepted sides are inbound
        thread.start()
        server_port = connections.listeners[0].getsockname()[1]
        client_ports: set[int] = set()
        started = time.monotonic()
        listener = connections.listeners[0]
        for _ in range(count):
            client = socket.create_connection((LOOPBACK, server_port))
            server, _ = listener.accept()
            client_ports.add(client.getsockname()[1])
            client.close()
            server.close()
        burst = time.monotonic() - started
        expected = 2 * count
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline and len(_ours(received, server_port, client_ports)) < expected:
            time.sleep(0.05)
        stop.set()
        thread.join()
        before = cpu_self()
        _, events = dataset.apply_stream(snapshot, list(received))
        apply_cpu = cpu_self() - before
        closed = {(event.fields["source"]["port"], event.fields["network"]["direction"]) for event in events
                  if event.action == SOCKET_CLOSED.name and event.fields["destination"]["port"] == server_port
                  and event.fields["source"]["port"] in client_ports}
        return {"connections": count, "expected": expected, "reported": len(closed), "burst": burst,
                "lost": stream.lost(), "apply_cpu": apply_cpu, "notifications": len(received)}
    finally:
        stop.set()
        stream.close()
        connections.close()
        dataset.close()


def _ours(received: list[Destroyed], server_port: int, client_ports: set[int]) -> list[Destroyed]:
    def ours(item: Destroyed) -> bool:
        ports = {item.local_port, item.remote_port}
        return server_port in ports and bool(ports & client_ports)
    return [item for item in received if ours(item)]


def report(steady: dict[str, Any], capture: dict[str, Any]) -> str:
    ms = 1000.0
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| established sockets in the snapshot | {steady['sockets']:,} |",
        f"| first poll (full /proc scan, cold caches), CPU | {steady['cold'] * ms:.0f} ms |",
        f"| steady-state poll (observe + diff, attribution included), CPU, median of {steady['runs']} | "
        f"{steady['poll'] * ms:.0f} ms |",
        f"| `ss -tan` CPU, median | {steady['ss_tan'] * ms:.0f} ms |",
        f"| `ss -tanp` CPU, median | {steady['ss_tanp'] * ms:.0f} ms |",
        f"| poll / `ss -tanp` (goal <= 0.5x) | {steady['poll'] / steady['ss_tanp']:.2f}x |",
        f"| poll / `ss -tan` | {steady['poll'] / steady['ss_tan']:.2f}x |",
        f"| snapshot JSON size | {steady['snapshot_bytes'] / 1e6:.1f} MB |",
        f"| poll + diff against the snapshot after a JSON round trip (restart), CPU | "
        f"{steady['after_restart'] * ms:.0f} ms |",
        f"| full state report ({steady['sockets']:,} existing_socket events), CPU | "
        f"{steady['state_report'] * ms:.0f} ms |",
        f"| short-lived connections opened and closed | {capture['connections']:,} in {capture['burst']:.2f} s |",
        f"| their sockets reported closed via the stream (goal >= 99.9%) | {capture['reported']:,} / "
        f"{capture['expected']:,} = {100.0 * capture['reported'] / capture['expected']:.2f}% |",
        f"| notifications dropped by the kernel (lost()) | {capture['lost']} |",
        f"| apply_stream CPU for {capture['notifications']:,} notifications | {capture['apply_cpu'] * ms:.0f} ms |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10_000, help="established connection pairs (2 sockets each)")
    parser.add_argument("--runs", type=int, default=7, help="steady-state polls (and ss runs) to take the median of")
    parser.add_argument("--short-lived", type=int, default=2_000, help="connections for the capture test")
    parser.add_argument("--hold-clients", nargs=2, metavar=("PORTS", "COUNT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.hold_clients:
        hold_clients([int(port) for port in arguments.hold_clients[0].split(",")], int(arguments.hold_clients[1]))
        return
    audit_state.warn_if_enabled()
    if os.geteuid() != 0:
        raise SystemExit("run as root: ss -p, /proc/*/fd of every process and the destroy groups need it")
    steady = steady_state(arguments.pairs, arguments.runs)
    capture = short_lived(arguments.short_lived)
    print(report(steady, capture))


if __name__ == "__main__":
    main()
