"""Benchmark of exec capture through the whole agent: execs at full speed, what reaches the output file, how fast.

Starts the real agent (`hostaudit run`, dataset process at period 1s, file output), waits for its first state
report in the output file, then measures:

1. idle overhead: CPU of `hostaudit: process` and of the whole agent over `--idle` seconds, the bench asleep
   (after waiting for a quiet host);
2. capture: `--execs` /bin/true run back to back by a bash loop (builtins only, so every child of the shell is
   a /bin/true), then as many by a Python launcher (os.posix_spawn, the wall time taken just before each spawn
   and the pid it returned). A thread tails the output file and stamps each line with its arrival time.

For each launcher: the share of execs reported as process_started (matched by pid and parent pid), with
process.executable, with process.args, with process_stopped and process.exit_code, and the latency from the
exec to the line in the output file (bash loop: from the event's @timestamp, the kernel's exec time to the
millisecond; Python launcher: from the wall time just before the spawn).

Run as root: `.venv/bin/python ops/bench/bench_capture.py` (about 50 s, a minute more if it must wait for a quiet
host; prints Markdown). Results and analysis: ops/bench/README.md, "Process capture through the whole agent".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import psutil

from cpu import bench_and_children_seconds, host_busy_seconds  # ops/bench/cpu.py
from sessions import stop_session  # ops/bench/sessions.py
import audit_state  # ops/bench/audit_state.py

REPO = Path(__file__).resolve().parents[2]
TRUE = os.path.realpath("/bin/true")
PROCESS_ONLY = "hostaudit.modules=[{module: system, datasets: [process], period: 1s}]"
TAIL_IDLE_INTERVAL = 0.1  # seconds between reads of the output file while nothing is measured
TAIL_FAST_INTERVAL = 0.002  # ... while execs run: the arrival times are this precise
GOAL_REPORTED = 99.9
GOAL_P99_MS = 250.0
GOAL_IDLE_PERCENT = 1.0


# ---------------------------------------------------------------------------------------------------------
# The agent and its output
# ---------------------------------------------------------------------------------------------------------

class OutputTail(threading.Thread):
    """Reads the agent's NDJSON output file as it grows; keeps (wall-clock arrival, line) for each line."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="tail", daemon=True)
        self.path = path
        self.interval = TAIL_IDLE_INTERVAL
        self.lines: list[tuple[float, bytes]] = []
        self.rotations = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        descriptor: int | None = None
        inode = 0
        pending = b""
        while not self._stopping.is_set():
            if descriptor is None:
                try:
                    descriptor = os.open(self.path, os.O_RDONLY)
                    inode = os.fstat(descriptor).st_ino
                except FileNotFoundError:
                    self._stopping.wait(self.interval)
                    continue
            chunk = os.read(descriptor, 1 << 20)
            if chunk:
                arrived = time.time()
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                self.lines.extend((arrived, line) for line in lines if line)
                continue
            try:
                if os.stat(self.path).st_ino != inode:  # rotated: the rest of the old file was read above
                    os.close(descriptor)
                    descriptor, pending = None, b""
                    self.rotations += 1
                    continue
            except FileNotFoundError:
                pass
            self._stopping.wait(self.interval)
        if descriptor is not None:
            os.close(descriptor)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)


class Agent:
    """`hostaudit run` with only the process dataset at period 1s and the file output, in a temporary dir; the
    code of `repo` (a checkout of another revision, to compare)."""

    def __init__(self, workdir: Path, repo: Path = REPO) -> None:
        self.workdir = workdir
        self.output = workdir / "out" / "hostaudit.ndjson"
        self.stderr_path = workdir / "agent.stderr"
        command = [sys.executable, "-m", "actors.cli", "run", "-E", f"path.data={workdir / 'data'}",
                   "-E", PROCESS_ONLY, "-E", "output.console.enabled=false", "-E", "output.file.enabled=true",
                   "-E", f"output.file.path={workdir / 'out'}",
                   "-E", "output.file.rotate_every_kb=4194304"]  # one file for the whole run
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                        start_new_session=True)

    def processes(self) -> dict[int, str]:
        """pid -> role ("supervisor" for the root) of every live process of the agent."""
        root = psutil.Process(self.process.pid)
        roles = {root.pid: "supervisor"}
        for child in root.children(recursive=True):
            try:
                title = child.cmdline()[:1]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if title and title[0].startswith("hostaudit: "):
                roles[child.pid] = title[0].removeprefix("hostaudit: ")
            else:  # multiprocessing's resource tracker
                roles[child.pid] = os.path.basename(title[0]) if title else "?"
        return roles

    def role_pid(self, role: str) -> int | None:
        return next((pid for pid, name in self.processes().items() if name == role), None)

    def log_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL to the whole session if it lingers; the exit code of the agent."""
        code = stop_session(self.process, 15)
        self._stderr.close()
        return code


def cpu_seconds(pids: dict[int, str]) -> dict[int, float]:
    times = {}
    for pid in pids:
        try:
            used = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        times[pid] = used.user + used.system
    return times


def steal_seconds() -> float:
    """CPU seconds the hypervisor took from this VM's cores since boot (its vCPUs were not running)."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def wait_for_quiet_host(limit: float, busy_percent: float) -> float:
    """Wait up to `limit` s for a 2 s window in which the host is busy less than `busy_percent` of one core
    (other work on the host skews every figure); return the last window's busy percentage."""
    deadline = time.monotonic() + limit
    while True:
        before = host_busy_seconds()
        time.sleep(2.0)
        busy = 100 * (host_busy_seconds() - before) / 2.0
        if busy < busy_percent or time.monotonic() >= deadline:
            return busy


def wait_until(condition: Callable[[], Any], timeout: float, what: str, agent: Agent) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; agent log:\n{agent.log_tail()}")
        if agent.process.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.process.returncode}); log:\n{agent.log_tail()}")
        time.sleep(0.1)
    return value


# ---------------------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Idle:
    seconds: float
    process_percent: float
    agent_percent: float
    roles: dict[str, float]
    other_load: float  # % of one core used by neither the agent nor this bench, meanwhile


def measure_idle(agent: Agent, seconds: float) -> Idle:
    pids = agent.processes()
    before, started = cpu_seconds(pids), time.monotonic()
    host_before, bench_before = host_busy_seconds(), bench_and_children_seconds()
    time.sleep(seconds)
    after, wall = cpu_seconds(pids), time.monotonic() - started
    host_used, bench_used = host_busy_seconds() - host_before, bench_and_children_seconds() - bench_before
    used = {pid: after[pid] - before[pid] for pid in before.keys() & after.keys()}
    roles: dict[str, float] = {}
    for pid, seconds_used in used.items():
        roles[pids[pid]] = roles.get(pids[pid], 0.0) + 100 * seconds_used / wall
    other = 100 * max(0.0, host_used - bench_used - sum(used.values())) / wall
    return Idle(wall, roles.get("process", float("nan")), 100 * sum(used.values()) / wall, roles, other)


@dataclass
class Launch:
    """One launcher's execs: the parent's pid, and the children's pids with the wall time before each exec
    (the Python launcher) or none (the bash loop: its children's pids come from the events)."""

    name: str
    parent: int
    execs: int
    seconds: float
    spawned: dict[int, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used by the agent while it ran
    other_load: float = 0.0  # % of one core used on the host by neither the agent nor the bench, meanwhile
    steal: float = 0.0  # seconds the hypervisor took from the vCPUs meanwhile


def launch_bash(execs: int) -> Launch:
    script = f"i=0; while [ $i -lt {execs} ]; do {TRUE}; i=$((i+1)); done"
    started = time.monotonic()
    shell = subprocess.Popen(["bash", "-c", script])
    shell.wait()
    return Launch("bash loop", shell.pid, execs, time.monotonic() - started)


def launch_python(execs: int, rate: float = 0.0) -> Launch:
    """posix_spawn /bin/true `execs` times, each reaped before the next; at most `rate` a second (0: full speed)."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    spawned: dict[int, float] = {}
    started = time.monotonic()
    for index in range(execs):
        if rate and (ahead := started + index / rate - time.monotonic()) > 0:
            time.sleep(ahead)
        before = time.time()
        pid = os.posix_spawn(TRUE, [TRUE], environment)
        spawned[pid] = before
        os.waitpid(pid, 0)
    name = f"Python posix_spawn, {rate:g}/s" if rate else "Python posix_spawn"
    return Launch(name, os.getpid(), execs, time.monotonic() - started, spawned)


@dataclass
class Seen:
    """What the output file said about one launcher's children, pid -> (arrival, event)."""

    started: dict[int, tuple[float, dict]] = field(default_factory=dict)
    stopped: dict[int, tuple[float, dict]] = field(default_factory=dict)
    changed_image: int = 0


class Events:
    """Parses the tail's lines incrementally and files the events of each launcher's children."""

    def __init__(self, tail: OutputTail) -> None:
        self.tail = tail
        self.parsed = 0

    def first_state_report(self) -> bool:
        return any(b'"existing_process"' in line for _, line in self.tail.lines)

    def collect(self, launch: Launch, seen: Seen) -> None:
        lines = self.tail.lines
        end = len(lines)
        for arrived, line in lines[self.parsed:end]:
            event = json.loads(line)
            process = event.get("process", {})
            if process.get("parent", {}).get("pid") != launch.parent:
                continue
            pid = process.get("pid")
            if launch.spawned and pid not in launch.spawned:
                continue  # the bench's own other children
            action = event["event"]["action"]
            if action == "process_started":
                seen.started.setdefault(pid, (arrived, event))
            elif action == "process_stopped":
                seen.stopped.setdefault(pid, (arrived, event))
            elif action == "process_changed_image":
                seen.changed_image += 1
        self.parsed = end

    def skip_to_now(self) -> None:
        self.parsed = len(self.tail.lines)


def drain(events: Events, launch: Launch, quiet: float, timeout: float) -> Seen:
    """Collect the launcher's events until all are in, or nothing new came for `quiet` s, or `timeout` s."""
    seen = Seen()
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        events.collect(launch, seen)
        count = len(seen.started) + len(seen.stopped)
        if len(seen.started) >= launch.execs and len(seen.stopped) >= launch.execs:
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            break
        time.sleep(0.25)
    return seen


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def event_time(event: dict) -> float:
    return datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00")).timestamp()


@dataclass
class Capture:
    name: str
    execs: int
    launch_seconds: float
    started: int
    with_exe: int
    wrong_exe: int
    with_args: int
    stopped_with_code: int
    latency_ms: tuple[float, float, float]  # p50, p99, max
    latency_from: str
    changed_image: int
    agent_cpu: dict[str, float]
    other_load: float
    steal: float


def summarise(launch: Launch, seen: Seen) -> Capture:
    started = [event for _, event in seen.started.values()]
    with_exe = [event for event in started if event["process"].get("executable")]
    if launch.spawned:
        latencies = [(arrived - launch.spawned[pid]) * 1e3 for pid, (arrived, _) in seen.started.items()]
        source = "wall time before the spawn"
    else:
        latencies = [(arrived - event_time(event)) * 1e3 for arrived, event in seen.started.values()]
        source = "the event's @timestamp (kernel exec time, ms)"
    return Capture(
        name=launch.name, execs=launch.execs, launch_seconds=launch.seconds, started=len(started),
        with_exe=len(with_exe), wrong_exe=sum(event["process"]["executable"] != TRUE for event in with_exe),
        with_args=sum(bool(event["process"].get("args")) for event in started),
        stopped_with_code=sum("exit_code" in event["process"] for _, event in seen.stopped.values()),
        latency_ms=(percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies, default=float("nan"))),
        latency_from=source, changed_image=seen.changed_image, agent_cpu=launch.cpu, other_load=launch.other_load,
        steal=launch.steal)


def run_capture(agent: Agent, tail: OutputTail, events: Events, launcher: Callable[[int], Launch], execs: int,
                drain_quiet: float, drain_timeout: float) -> Capture:
    events.skip_to_now()
    pids = agent.processes()
    before = cpu_seconds(pids)
    host_before, bench_before, started = host_busy_seconds(), bench_and_children_seconds(), time.monotonic()
    steal_before = steal_seconds()
    tail.interval = TAIL_FAST_INTERVAL
    launch = launcher(execs)
    seen = drain(events, launch, drain_quiet, drain_timeout)
    tail.interval = TAIL_IDLE_INTERVAL
    after = cpu_seconds(pids)
    host_used, bench_used = host_busy_seconds() - host_before, bench_and_children_seconds() - bench_before
    for pid in before.keys() & after.keys():
        launch.cpu[pids[pid]] = launch.cpu.get(pids[pid], 0.0) + after[pid] - before[pid]
    launch.cpu["agent"] = sum(launch.cpu.values())
    launch.steal = steal_seconds() - steal_before
    launch.other_load = 100 * max(0.0, host_used - bench_used - launch.cpu["agent"]) / (time.monotonic() - started)
    return summarise(launch, seen)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------

def share(count: int, total: int) -> str:
    return f"{100 * count / total:.2f}% ({count})" if total else "n/a"


def print_report(idle: Idle, captures: list[Capture], agent_exit: int | None, rotations: int) -> None:
    print(f"\nHost: {psutil.cpu_count()} cores, Linux {os.uname().release}, Python {sys.version.split()[0]}; "
          f"load average at the end {', '.join(f'{load:.2f}' for load in os.getloadavg())}\n")
    print("| measure | " + " | ".join(capture.name for capture in captures) + " | goal |")
    print("|---|" + "---|" * len(captures) + "---|")

    def row(label: str, cell: Callable[[Capture], str], goal: str = "") -> None:
        print(f"| {label} | " + " | ".join(cell(capture) for capture in captures) + f" | {goal} |")

    row("execs of /bin/true (run time)", lambda c: f"{c.execs} ({c.launch_seconds:.1f} s)")
    row("reported as process_started (pid + parent pid)", lambda c: share(c.started, c.execs))
    row("... with process.executable", lambda c: share(c.with_exe, c.execs)
        + (f", {c.wrong_exe} not {TRUE}" if c.wrong_exe else ""), f">= {GOAL_REPORTED}%")
    row("... with process.args", lambda c: share(c.with_args, c.execs))
    row("process_stopped with process.exit_code", lambda c: share(c.stopped_with_code, c.execs))
    row("exec -> line in the output file, p50 / p99 / max",
        lambda c: " / ".join(f"{value:.0f}" for value in c.latency_ms) + " ms", f"p99 < {GOAL_P99_MS:.0f} ms")
    row("CPU of `hostaudit: process` / whole agent during the run",
        lambda c: f"{c.agent_cpu.get('process', 0.0):.1f} s / {c.agent_cpu['agent']:.1f} s")
    print()
    for capture in captures:
        roles = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in sorted(capture.agent_cpu.items())
                          if role != "agent" and seconds >= 0.005)
        print(f"- {capture.name}: latency measured from {capture.latency_from}; agent CPU by role: {roles}; "
              f"other load on the host meanwhile {capture.other_load:.0f}% of one core, hypervisor steal "
              f"{capture.steal * 1e3:.0f} ms"
              + (f"; {capture.changed_image} process_changed_image" if capture.changed_image else ""))
    print(f"\n| idle, period 1s, {idle.seconds:.0f} s | CPU | goal |\n|---|---|---|")
    print(f"| `hostaudit: process` | {idle.process_percent:.2f}% of one core | < {GOAL_IDLE_PERCENT:g}% |")
    print(f"| whole agent ({len(idle.roles)} processes) | {idle.agent_percent:.2f}% of one core | |")
    print()
    print("- idle CPU by role: " + ", ".join(f"{role} {percent:.2f}%" for role, percent in sorted(idle.roles.items()))
          + f"; other load on the host meanwhile {idle.other_load:.1f}% of one core")
    print(f"- agent exit code on SIGTERM: {agent_exit}" + (f"; output rotations: {rotations}" if rotations else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execs", type=int, default=5000, help="execs of /bin/true per launcher")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the first state report "
                        "before measuring idle (the first poll hashes every executable)")
    parser.add_argument("--launchers", default="bash,python", help="comma-separated: bash, python, and "
                        "python@RATE for the Python launcher held to RATE execs a second (python@500)")
    parser.add_argument("--drain-quiet", type=float, default=10.0,
                        help="stop waiting for a launcher's events after this many seconds without a new one")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (output, log)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this many seconds for the "
                        "host to be quiet (busy under --quiet-percent of one core) before measuring")
    parser.add_argument("--quiet-percent", type=float, default=20.0)
    args = parser.parse_args()
    audit_state.warn_if_enabled()
    if os.geteuid() != 0:
        sys.exit("bench_capture.py needs root (the agent subscribes to the kernel's process connector)")
    chosen: list[Callable[[int], Launch]] = []
    for name in (name.strip() for name in args.launchers.split(",") if name.strip()):
        if name == "bash":
            chosen.append(launch_bash)
        elif name == "python" or name.startswith("python@"):
            rate = float(name.partition("@")[2] or 0)
            chosen.append(lambda execs, rate=rate: launch_python(execs, rate))
        else:
            parser.error(f"--launchers: unknown launcher {name!r}")

    workdir = Path(tempfile.mkdtemp(prefix="hostaudit-capture-"))
    agent = Agent(workdir)
    tail = OutputTail(agent.output)
    tail.start()
    events = Events(tail)
    agent_exit: int | None = None
    try:
        wait_until(lambda: agent.role_pid("process"), 20, "the process collector", agent)
        wait_until(events.first_state_report, 60, "the first state report in the output file", agent)
        time.sleep(args.settle)
        quiet = wait_for_quiet_host(args.quiet_wait, args.quiet_percent)
        if quiet >= args.quiet_percent:
            print(f"warning: the host stayed busy ({quiet:.0f}% of one core without this bench); figures are "
                  "skewed", file=sys.stderr)
        idle = measure_idle(agent, args.idle)
        captures = [run_capture(agent, tail, events, launcher, args.execs, args.drain_quiet, args.drain_timeout)
                    for launcher in chosen]
    finally:
        agent_exit = agent.stop()
        tail.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(idle, captures, agent_exit, tail.rotations)


if __name__ == "__main__":
    main()
