"""Measures the whole agent's memory (PSS, private and RSS of every hostaudit process) and its idle CPU (utime +
stime of each process over a window), for every built dataset or the seed configuration, of one or more trees
run side by side (e.g. `--tree /tmp/before --tree .`)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from actors.datasets import BUILT_DATASETS  # noqa: E402

# The configuration the project is measured at: Auditbeat's example (host and user at 1m, process and socket at 1s).
SEED_CONFIG = REPO / "settings" / "auditbeat-example.yml"


@dataclass
class Row:
    """One agent process: its title, memory (MiB) and CPU (% of a core over the idle window)."""

    name: str
    pss: float
    private: float
    rss: float
    cpu: float = 0.0


def agent_processes(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def process_title(process: psutil.Process) -> str:
    """`hostaudit: socket` (setproctitle), or the start of any other command line (multiprocessing's tracker)."""
    title = " ".join(process.cmdline()).strip()
    return title if title.startswith("hostaudit:") else title[:60]


def agent_command(workdir: str, seed: bool, datasets: list[str], period: str) -> list[str]:
    command = [sys.executable, "-m", "actors.cli", "run", "-E", f"path.data={workdir}/data",
               "-E", "output.console.enabled=false", "-E", "output.file.enabled=true",
               "-E", f"output.file.path={workdir}/out"]
    if seed:
        return [*command, "-c", str(SEED_CONFIG)]
    return [*command, "-E", f"hostaudit.modules=[{{module: system, datasets: [{', '.join(datasets)}], "
                            f"period: {period}}}]"]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def start(tree: Path, workdir: str, seed: bool, datasets: list[str], period: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(agent_command(workdir, seed, datasets, period), cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def sample(agents: dict[Path, subprocess.Popen[bytes]], idle_seconds: float) -> dict[Path, list[Row]]:
    """Memory of every process of every agent now, and each one's CPU over the same next `idle_seconds` (one
    window for all the agents: the load they see is the same)."""
    watched: list[tuple[Path, psutil.Process, Row, float]] = []
    for tree, agent in agents.items():
        for process in agent_processes(psutil.Process(agent.pid)):
            try:
                info = process.memory_full_info()
                row = Row(process_title(process), info.pss / 2**20, info.uss / 2**20, info.rss / 2**20)
                watched.append((tree, process, row, cpu_seconds(process)))
            except psutil.NoSuchProcess:
                continue
    if idle_seconds > 0:
        started = time.monotonic()
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - started
        for _, process, row, before in watched:
            try:
                row.cpu = 100 * (cpu_seconds(process) - before) / elapsed
            except psutil.NoSuchProcess:
                pass
    return {tree: sorted((row for owner, _, row, _ in watched if owner == tree), key=lambda row: row.name)
            for tree in agents}


def starts_reported(workdir: str) -> int:
    """The process_started events an agent wrote to its file output so far (other people's execs, when idle)."""
    return sum(path.read_bytes().count(b'"process_started"') for path in Path(workdir, "out").glob("*")
               if path.is_file())


def stop(agent: subprocess.Popen[bytes]) -> None:
    os.killpg(agent.pid, signal.SIGTERM)
    agent.wait(15)


def fill_host(processes: int) -> list[subprocess.Popen[bytes]]:
    """Start idle `sleep` processes until the host has `processes` of them in all (the issue's ~400)."""
    missing = processes - len(psutil.pids())
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(max(0, missing))]


def loopback_connections(per_second: float, stop: threading.Event) -> None:
    """Open, use and close `per_second` TCP connections a second on 127.0.0.1 until `stop` (none when 0)."""
    if per_second <= 0:
        return
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()
        while not stop.wait(1 / per_second):
            with socket.create_connection(address) as client:
                accepted, _ = listener.accept()
                with accepted:
                    client.sendall(b"x")
                    accepted.recv(1)


def measure(trees: list[Path], seed: bool, datasets: list[str], period: str, settle_seconds: float,
            idle_seconds: float, host_processes: int = 0, loopback: float = 0.0
            ) -> tuple[dict[Path, list[Row]], int, dict[Path, int]]:
    """Run the agent of every tree at once (same load, same moment), settle, then sample each; also answer how
    many processes the host had, and how many process starts each agent reported during the sample.
    `loopback` connections a second are made on 127.0.0.1 meanwhile."""
    with tempfile.TemporaryDirectory() as root:
        agents = {}
        sleepers = fill_host(host_processes)
        stop_load = threading.Event()
        load = threading.Thread(target=loopback_connections, args=(loopback, stop_load), daemon=True)
        load.start()
        try:
            for index, tree in enumerate(trees):
                agents[tree] = start(tree, f"{root}/{index}", seed, datasets, period)
            time.sleep(settle_seconds)  # a benchmark, not a test: let every collector finish its first cycles
            on_host = len(psutil.pids())
            workdirs = {tree: f"{root}/{index}" for index, tree in enumerate(trees)}
            starts = {tree: starts_reported(workdir) for tree, workdir in workdirs.items()}
            rows = sample(agents, idle_seconds)
            return rows, on_host, {tree: starts_reported(workdir) - starts[tree] for tree, workdir in workdirs.items()}
        finally:
            stop_load.set()
            load.join()
            for agent in agents.values():
                stop(agent)
            for sleeper in sleepers:
                sleeper.kill()
                sleeper.wait()


def table(rows: list[Row]) -> str:
    lines = ["| process | PSS MiB | private MiB | RSS MiB | CPU % of a core |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.pss:.1f} | {r.private:.1f} | {r.rss:.1f} | {r.cpu:.2f} |" for r in rows]
    lines.append(f"| **whole agent ({len(rows)} processes)** | **{sum(r.pss for r in rows):.1f}** | "
                 f"{sum(r.private for r in rows):.1f} | {sum(r.rss for r in rows):.1f} | "
                 f"**{sum(r.cpu for r in rows):.2f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", action="store_true",
                        help=f"the seed configuration ({SEED_CONFIG.relative_to(REPO)}) instead of --datasets")
    parser.add_argument("--datasets", default=",".join(BUILT_DATASETS), help="comma-separated (default: all built)")
    parser.add_argument("--period", default="1s", help="the period of --datasets (default 1s)")
    parser.add_argument("--tree", action="append", type=Path,
                        help="a checkout to run the agent from (repeatable; default: this one)")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds before measuring (default 8)")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of CPU measured per process (default 0)")
    parser.add_argument("--host-processes", type=int, default=0,
                        help="start idle processes until the host has this many (default: none added)")
    parser.add_argument("--loopback", type=float, default=0.0,
                        help="TCP connections a second made on 127.0.0.1 throughout (default 0)")
    arguments = parser.parse_args()
    datasets = arguments.datasets.split(",")
    results, on_host, starts = measure(arguments.tree or [REPO], arguments.seed, datasets, arguments.period,
                                       arguments.settle, arguments.idle, arguments.host_processes, arguments.loopback)
    print(f"Configuration: {SEED_CONFIG.name if arguments.seed else ', '.join(datasets) + ' at ' + arguments.period}"
          f"; CPU over {arguments.idle:.0f} s, {on_host} processes on the host, {arguments.loopback:g} loopback "
          f"connections/s, load average "
          f"{os.getloadavg()[0]:.2f}\n")
    for tree, rows in results.items():
        print(f"### {tree}\n\n{table(rows)}\n\nprocess_started events reported meanwhile: {starts[tree]}\n")


if __name__ == "__main__":
    main()
