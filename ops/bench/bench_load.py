"""Side-by-side load benchmark of hostaudit and real Auditbeat 7.17.29: CPU by process, events, CPU per exec, PSS.

Runs, one agent at a time (never two at once):
1. hostaudit at the seed configuration (host and user every 1m, process and socket every 1s, file output):
   an idle window, then a load window per rate: N execs/s of a marker binary and M loopback TCP connections/s;
2. Auditbeat's auditd module with an execve rule: the same idle and load windows;
3. Auditbeat's system module (host, login, package, process, user every 1s; its socket dataset needs kprobes):
   an idle window;
4. hostaudit with every built dataset (login and package too): PSS only.

Auditbeat is built once from the Go module proxy into ~/.cache/hostaudit/auditbeat-7.17.29 (minutes the first
time). Without Go or the build, the bench says so and prints hostaudit's figures alone. Run as root:
`.venv/bin/python ops/bench/bench_load.py` (about 9 minutes a round; `--quick`: about 2.5). See ops/bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import psutil

import audit_state  # ops/bench/audit_state.py
from auditbeat import Auditbeat, Unavailable, build  # ops/bench/auditbeat.py
from cpu import TreeCpu, bench_and_children_seconds, cpu_by_name, host_busy_seconds, tree_cpu  # ops/bench/cpu.py
from sessions import stop_session  # ops/bench/sessions.py

REPO = Path(__file__).resolve().parents[2]
MARKER_NAME = "hostaudit-bench-marker"
SEED_MODULES = ("hostaudit.modules=[{module: system, datasets: [host, user], period: 1m}, "
                "{module: system, datasets: [process, socket], period: 1s}]")
ALL_MODULES = ("hostaudit.modules=[{module: system, datasets: [host, login, package, user], period: 1m}, "
               "{module: system, datasets: [process, socket], period: 1s}]")
AUDITD_MODULE = """- module: auditd
  audit_rules: "-a always,exit -F arch=b64 -S execve,execveat -k exec"
  socket_type: unicast
  rate_limit: 0
  backlog_limit: 8192
  include_raw_message: false
  include_warnings: false"""
SYSTEM_MODULE = """- module: system
  datasets: [host, login, package, user]
  period: 1m
- module: system
  datasets: [process]
  period: 1s"""
READY_TIMEOUT = 90.0
DRAIN_QUIET = 3.0  # a load window's events are all in when none came for this long ...
DRAIN_TIMEOUT = 30.0  # ... or after this long


# ---------------------------------------------------------------------------------------------------------
# The agents
# ---------------------------------------------------------------------------------------------------------

class Agent(Protocol):
    name: str
    process: subprocess.Popen
    exec_action: bytes  # what marks an exec event in its output

    def output_lines(self) -> list[bytes]: ...
    def log_tail(self) -> str: ...
    def stop(self) -> int | None: ...


class Hostaudit:
    """`hostaudit run` with the file output in `workdir`; `modules` is the `-E hostaudit.modules=...` override."""

    name = "hostaudit"
    exec_action = b'"action":"process_started"'

    def __init__(self, workdir: Path, modules: str) -> None:
        self.output_dir = workdir / "out"
        self.log_path = workdir / "hostaudit.log"
        command = [sys.executable, "-m", "actors.cli", "run", "-E", modules,
                   "-E", "output.console.enabled=false", "-E", "output.file.enabled=true",
                   "-E", f"output.file.path={self.output_dir}", "-E", "output.file.rotate_every_kb=4194304",
                   "-E", f"path.data={workdir / 'data'}"]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log,
                                        start_new_session=True)

    def output_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        for path in sorted(self.output_dir.glob("hostaudit*.ndjson*")):
            lines.extend(line for line in path.read_bytes().splitlines() if line)
        return lines

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        code = stop_session(self.process, 20)
        self._log.close()
        return code


class AuditbeatAgent(Auditbeat):
    name = "Auditbeat"
    exec_action = b'"action":"executed"'  # the auditd module's execve events


def pss_mib(root: int) -> tuple[float, int]:
    """PSS of `root` and its descendants in MiB, and how many processes."""
    total, count = 0, 0
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan"), 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
            count += 1
        except psutil.NoSuchProcess:
            continue
    return total / 2**20, count


def wait_for(condition: Callable[[], bool], agent: Agent, what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if agent.process.poll() is not None:
            raise SystemExit(f"{agent.name} exited ({agent.process.returncode}) waiting for {what}; log:\n"
                             f"{agent.log_tail()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; {agent.name} log:\n"
                             f"{agent.log_tail()}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------------------

class Marker:
    """A copy of /bin/true named hostaudit-bench-marker; each exec carries an argument no one else uses."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MARKER_NAME
        shutil.copyfile(os.path.realpath("/bin/true"), self.path)
        self.path.chmod(0o755)
        self.token = f"bench-{uuid.uuid4().hex[:12]}"

    def run(self, tag: str) -> None:
        subprocess.run([str(self.path), f"{self.token}-{tag}"], check=True)

    def count(self, lines: list[bytes], tag: str, action: bytes) -> int:
        """Exec events (`action`) of this tag's execs."""
        needle = f"{self.token}-{tag}".encode()
        return sum(needle in line and action in line for line in lines)


class ExecLoad(threading.Thread):
    """posix_spawn the marker `rate` times a second on a steady schedule for `seconds`, reaping each child."""

    def __init__(self, marker: Marker, tag: str, rate: float, seconds: float) -> None:
        super().__init__(name="exec-load", daemon=True)
        self.argv = [str(marker.path), f"{marker.token}-{tag}"]
        self.rate, self.seconds = rate, seconds
        self.execs = 0

    def run(self) -> None:
        environment = {"PATH": "/usr/bin:/bin"}
        started = time.monotonic()
        total = int(self.rate * self.seconds)
        for index in range(total):
            if (ahead := started + index / self.rate - time.monotonic()) > 0:
                time.sleep(ahead)
            pid = os.posix_spawn(self.argv[0], self.argv, environment)
            os.waitpid(pid, 0)
            self.execs += 1


class ConnectionLoad(threading.Thread):
    """`rate` loopback TCP connections a second for `seconds`, each sending a few bytes to a listener thread."""

    def __init__(self, rate: float, seconds: float) -> None:
        super().__init__(name="connection-load", daemon=True)
        self.rate, self.seconds = rate, seconds
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self._accepting = threading.Thread(target=self._accept, name="listener", daemon=True)
        self._done = threading.Event()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            with connection:
                connection.recv(64)

    def run(self) -> None:
        self._accepting.start()
        address = self.listener.getsockname()
        started = time.monotonic()
        for index in range(int(self.rate * self.seconds)):
            if (ahead := started + index / self.rate - time.monotonic()) > 0:
                time.sleep(ahead)
            with socket.create_connection(address, timeout=5) as connection:
                connection.sendall(b"hostaudit-bench")
            self.connections += 1
        self._done.set()
        self._accepting.join(2)
        self.listener.close()


# ---------------------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Window:
    """What one agent used over one measured window."""

    label: str
    wall: float
    cpu: dict[str, float]  # CPU seconds by process name
    events: int  # lines the agent wrote meanwhile
    host_execs: int  # exec events among them: the marker's and every other exec on the host
    execs: int = 0
    connections: int = 0
    captured: int = 0  # the marker's execs found in the agent's output
    other_load: float = 0.0  # % of one core used by neither the agent nor this bench
    pss: float = float("nan")  # after the window

    @property
    def agent_cpu(self) -> float:
        return sum(self.cpu.values())


@dataclass
class Clock:
    """Host, bench and agent CPU at the start of a window."""

    wall: float = field(default_factory=time.monotonic)
    host: float = field(default_factory=host_busy_seconds)
    bench: float = field(default_factory=bench_and_children_seconds)
    agent: TreeCpu | None = None
    lines: int = 0


def start_clock(agent: Agent) -> Clock:
    return Clock(agent=tree_cpu(agent.process.pid), lines=len(agent.output_lines()))


def stop_clock(agent: Agent, clock: Clock, label: str) -> Window:
    after = tree_cpu(agent.process.pid)
    wall = time.monotonic() - clock.wall
    used = cpu_by_name(clock.agent or TreeCpu({}, {}), after)
    other = host_busy_seconds() - clock.host - (bench_and_children_seconds() - clock.bench) - sum(used.values())
    written = agent.output_lines()[clock.lines:]
    return Window(label, wall, used, len(written), sum(agent.exec_action in line for line in written),
                  other_load=100 * max(0.0, other) / wall, pss=pss_mib(agent.process.pid)[0])


def idle_window(agent: Agent, seconds: float) -> Window:
    clock = start_clock(agent)
    time.sleep(seconds)
    return stop_clock(agent, clock, "idle")


def load_window(agent: Agent, marker: Marker, rate: float, connections: float, seconds: float) -> Window:
    """The load for `seconds`, then until the agent wrote every marker exec (or none came for DRAIN_QUIET s);
    CPU is counted over both."""
    tag = f"load{rate:g}"
    clock = start_clock(agent)
    execs, connecting = ExecLoad(marker, tag, rate, seconds), ConnectionLoad(connections, seconds)
    execs.start()
    connecting.start()
    execs.join()
    connecting.join()
    captured, last_change = 0, time.monotonic()
    deadline = last_change + DRAIN_TIMEOUT
    while captured < execs.execs and time.monotonic() - last_change < DRAIN_QUIET and time.monotonic() < deadline:
        time.sleep(0.5)
        if (now := marker.count(agent.output_lines(), tag, agent.exec_action)) != captured:
            captured, last_change = now, time.monotonic()
    window = stop_clock(agent, clock, f"{rate:g} execs/s")
    window.execs, window.connections, window.captured = execs.execs, connecting.connections, captured
    return window


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    agent: str
    setup: str
    pss_idle: float
    processes: int
    windows: list[Window]
    exit_code: int | None


def measure(agent: Agent, setup: str, ready: Callable[[], bool], settle: float, idle_seconds: float,
            rates: list[float], connections: float, seconds: float, marker: Marker) -> Run:
    try:
        wait_for(ready, agent, f"{agent.name} to be ready")
        time.sleep(settle)
        pss, processes = pss_mib(agent.process.pid)
        windows = [idle_window(agent, idle_seconds)] if idle_seconds else []
        windows += [load_window(agent, marker, rate, connections, seconds) for rate in rates]
    finally:
        code = agent.stop()
    return Run(agent.name, setup, pss, processes, windows, code)


def marker_seen(agent: Agent, marker: Marker) -> Callable[[], bool]:
    """Runs the marker once and says whether the agent reported it: the agent sees execs."""
    def check() -> bool:
        marker.run("ready")
        return marker.count(agent.output_lines(), "ready", agent.exec_action) > 0
    return check


def run_hostaudit(workdir: Path, args: argparse.Namespace, marker: Marker) -> Run:
    agent = Hostaudit(make_dir(workdir / "hostaudit-seed"), SEED_MODULES)
    return measure(agent, "seed: host, user 1m; process, socket 1s", marker_seen(agent, marker), args.settle,
                   args.idle_seconds, args.rates, args.connections, args.seconds, marker)


def run_hostaudit_all(workdir: Path, args: argparse.Namespace, marker: Marker) -> Run:
    agent = Hostaudit(make_dir(workdir / "hostaudit-all"), ALL_MODULES)
    return measure(agent, "all datasets: host, login, package, user 1m; process, socket 1s",
                   marker_seen(agent, marker), args.settle, 0, [], 0, 0, marker)


def run_auditd(binary: Path, workdir: Path, args: argparse.Namespace, marker: Marker) -> Run:
    """Auditbeat's auditd module; the kernel's audit state is put back after it (it leaves audit enabled, which
    would tax every syscall of the runs after it)."""
    before = audit_state.read_state()
    if before is not None and before.rules:
        print(f"warning: {len(before.rules)} audit rule(s) are loaded before Auditbeat starts (another audit "
              "client? a crashed Auditbeat?)", file=sys.stderr)
    agent = AuditbeatAgent(binary, make_dir(workdir / "auditbeat-auditd"), AUDITD_MODULE)
    try:
        return measure(agent, "auditd module, execve rule", marker_seen(agent, marker), args.settle,
                       args.idle_seconds, args.rates, args.connections, args.seconds, marker)
    finally:
        audit_state.restore(before)


def run_system(binary: Path, workdir: Path, args: argparse.Namespace, marker: Marker) -> Run:
    agent = AuditbeatAgent(binary, make_dir(workdir / "auditbeat-system"), SYSTEM_MODULE)
    agent.exec_action = b'"action":"process_started"'  # its process dataset: the starts one poll caught
    return measure(agent, "system module: host, login, package, user 1m; process 1s",
                   lambda: bool(agent.output_lines()), args.settle, args.idle_seconds, [], 0, 0, marker)


def make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------

def per_minute(seconds: float, wall: float) -> str:
    return f"{60 * seconds / wall:.2f}"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "n/a"


def print_cpu_by_process(run: Run) -> None:
    windows = run.windows
    names = sorted({name for window in windows for name in window.cpu})
    print(f"\n#### {run.agent}, {run.setup}: CPU seconds per minute by process\n")
    print("| process | " + " | ".join(window.label for window in windows) + " |")
    print("|---|" + "---|" * len(windows))
    for name in names:
        print(f"| {name} | " + " | ".join(per_minute(window.cpu.get(name, 0.0), window.wall) for window in windows)
              + " |")
    print("| **whole agent** | " + " | ".join(f"**{per_minute(window.agent_cpu, window.wall)}**"
                                             for window in windows) + " |")
    print("| window (s), other load on the host (% of a core) | "
          + " | ".join(f"{window.wall:.0f}, {window.other_load:.0f}%" for window in windows) + " |")


@dataclass(frozen=True)
class PerExec:
    whole_ms: float  # all the agent's CPU in the window / the marker's execs
    net_ms: float  # (that - the idle window's CPU scaled to the same wall time) / the marker's execs
    reported_ms: float  # all the agent's CPU in the window / every exec it reported (the host's too)


def per_exec(run: Run, window: Window) -> PerExec:
    idle = next((w for w in run.windows if w.label == "idle"), None)
    baseline = idle.agent_cpu / idle.wall * window.wall if idle else float("nan")
    return PerExec(1e3 * window.agent_cpu / max(window.execs, 1),
                   1e3 * (window.agent_cpu - baseline) / max(window.execs, 1),
                   1e3 * window.agent_cpu / max(window.host_execs, 1))


def window_of(run: Run, rate: float) -> Window:
    return next(window for window in run.windows if window.label == f"{rate:g} execs/s")


def print_load_table(ours: Run, theirs: Run | None, rates: list[float], heading: str) -> None:
    print(f"\n### {heading}\n")
    print("| rate | agent | marker execs (connections) | marker execs captured | events written (execs "
          "reported) | CPU s/min | CPU/marker exec, whole (ms) | CPU/marker exec, net of idle (ms) | "
          "CPU/reported exec (ms) | PSS after (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        for run in (ours, theirs):
            if run is None:
                continue
            window = window_of(run, rate)
            cost = per_exec(run, window)
            print(f"| {rate:g}/s | {run.agent} | {window.execs} ({window.connections}) | "
                  f"{100 * window.captured / max(window.execs, 1):.1f}% ({window.captured}) | {window.events} "
                  f"({window.host_execs}) | {per_minute(window.agent_cpu, window.wall)} | {cost.whole_ms:.2f} | "
                  f"{cost.net_ms:.2f} | {cost.reported_ms:.2f} | {window.pss:.0f} |")
        if theirs is not None:
            mine_window, peer_window = window_of(ours, rate), window_of(theirs, rate)
            mine, peer = per_exec(ours, mine_window), per_exec(theirs, peer_window)
            cpu = ratio(mine_window.agent_cpu / mine_window.wall, peer_window.agent_cpu / peer_window.wall)
            print(f"| {rate:g}/s | **hostaudit / Auditbeat** | | | | **{cpu}** "
                  f"| **{ratio(mine.whole_ms, peer.whole_ms)}** | **{ratio(mine.net_ms, peer.net_ms)}** "
                  f"| **{ratio(mine.reported_ms, peer.reported_ms)}** | |")


def idle_percent(run: Run) -> float:
    idle = next(w for w in run.windows if w.label == "idle")
    return 100 * idle.agent_cpu / idle.wall


def print_idle_table(runs: list[Run]) -> None:
    print("\n### Idle and memory\n")
    print("| agent | setup | processes | PSS after settling (MiB) | idle CPU (% of a core) | events written idle "
          "(execs reported) |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        idle = next((w for w in run.windows if w.label == "idle"), None)
        cpu = f"{idle_percent(run):.2f}%" if idle else "not measured"
        written = f"{idle.events} ({idle.host_execs})" if idle else ""
        print(f"| {run.agent} | {run.setup} | {run.processes} | {run.pss_idle:.1f} | {cpu} | {written} |")


@dataclass
class Round:
    """One pass of the agents, one after another."""

    ours: Run
    auditd: Run | None
    system: Run | None


def print_report(rounds: list[Round], everything: Run, args: argparse.Namespace, missing_peer: str | None) -> None:
    print(f"\n## Load: hostaudit vs Auditbeat 7.17.29\n\nHost: {psutil.cpu_count()} cores, Linux "
          f"{os.uname().release}; load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"windows of {args.seconds:g} s under load ({args.connections:g} loopback connections/s beside the "
          f"execs), {args.idle_seconds:g} s idle.")
    if missing_peer:
        print(f"\n**Auditbeat is not available: {missing_peer}.** hostaudit's figures alone.")
    for number, round_ in enumerate(rounds, 1):
        heading = "Under load" + (f", round {number} of {len(rounds)}" if len(rounds) > 1 else "")
        print_load_table(round_.ours, round_.auditd, args.rates, heading)
    print("\nThe window is the load, then until the agent's output holds every marker exec (or none came for "
          f"{DRAIN_QUIET:g} s). CPU/marker exec, whole = all of the agent's CPU in the window / the marker's execs. "
          "Net of idle = the same minus the agent's idle-window CPU scaled to the window's length (the host's own "
          "execs differ between windows: noisy). CPU/reported exec = all of the agent's CPU / every exec event it "
          "wrote in the window, the marker's and the host's other execs. Auditbeat here is its auditd module "
          "(one event per exec: the execve rule); hostaudit counts process_started events.")
    runs = [run for round_ in rounds for run in (round_.ours, round_.system, round_.auditd) if run is not None]
    print_idle_table([*runs, everything])
    for ours, system in ((round_.ours, round_.system) for round_ in rounds if round_.system is not None):
        print(f"\nhostaudit seed / Auditbeat system module: PSS {ratio(ours.pss_idle, system.pss_idle)}, idle CPU "
              f"{ratio(idle_percent(ours), idle_percent(system))}.")
    for run in runs:
        print_cpu_by_process(run)
    codes = ", ".join(f"{run.agent} ({run.setup.split(':')[0]}) {run.exit_code}" for run in [*runs, everything])
    print(f"\nExit codes on SIGTERM: {codes}.")


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load window")
    parser.add_argument("--rates", default="50,200", help="execs a second of each load window, comma-separated")
    parser.add_argument("--connections", type=float, default=10.0, help="loopback TCP connections a second")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="length of the idle windows")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between an agent being ready (it "
                        "reported a marker exec, or wrote its first event) and the first measure")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 10 s windows, 5 s settle (overrides --seconds, --idle-seconds, --settle)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of hostaudit, Auditbeat auditd, "
                        "Auditbeat system, one after another")
    parser.add_argument("--no-auditbeat", action="store_true", help="hostaudit alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (outputs, logs)")
    args = parser.parse_args()
    args.rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    if args.quick:
        args.seconds, args.idle_seconds, args.settle = 10.0, 10.0, 5.0
    return args


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_load.py needs root (hostaudit's process connector, Auditbeat's audit rules)")
    audit_state.warn_if_enabled("hostaudit's figures")
    binary, missing_peer = None, None
    if args.no_auditbeat:
        missing_peer = "--no-auditbeat"
    else:
        try:
            binary = build()
        except Unavailable as error:
            missing_peer = str(error)
            print(f"Auditbeat is not available: {error}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="hostaudit-load-"))
    marker = Marker(workdir)
    rounds = []
    try:
        for number in range(1, args.repeats + 1):
            ours = run_hostaudit(workdir / f"round{number}", args, marker)
            auditd = run_auditd(binary, workdir / f"round{number}", args, marker) if binary else None
            system = run_system(binary, workdir / f"round{number}", args, marker) if binary else None
            rounds.append(Round(ours, auditd, system))
        everything = run_hostaudit_all(workdir, args, marker)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(rounds, everything, args, missing_peer)


if __name__ == "__main__":
    main()
