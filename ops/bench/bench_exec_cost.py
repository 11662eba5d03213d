"""CPU per exec through the whole agent: a steady rate of /bin/true, the agent's CPU by process, per exec seen.

For each revision given (`--code NAME=DIR`, a checkout; default: this tree), in rotated order each round: start
the real agent (process dataset only, period 1s, file output; `bench_capture.Agent`), wait for its first state
report, let it settle, then read every agent process's CPU (utime + stime, grouped by process title) over an
idle window and over a run of `--rate` execs a second of /bin/true for `--seconds` (a Python posix_spawn loop,
until their events are in the output file). The agent reports every exec on the host, other people's too (a
shared machine), so each window also counts the process_started lines that reached the output: with CPU = a x
seconds + b x execs in both windows, b is the cost of an exec (its process_started and process_stopped) and a
the idle rate, by process.

    .venv/bin/python ops/bench/bench_exec_cost.py --code before=/tmp/before --code after=. --rounds 2
    # --rate 200 --seconds 25 --idle 10 --profile DIR (py-spy each Python process of the agent during the run)

Run as root (the agent subscribes to the kernel's process connector). Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit_state  # noqa: E402  (ops/bench/audit_state.py)
from bench_capture import (REPO, Agent, Events, OutputTail, cpu_seconds, drain, launch_python, summarise,  # noqa: E402
                           wait_until)

PROFILED_ROLES = ("process", "proc-connector", "producer")


@dataclass
class Round:
    """One agent run of one revision: CPU per exec by process, and what reached the output."""

    code: str
    execs: int
    seen: tuple[int, int]  # process_started lines in the output during the idle window and the run
    per_exec_us: dict[str, float]  # role -> µs of CPU per exec ("agent": all of them)
    idle_percent: float  # the whole agent's idle CPU, % of one core (a)
    with_exe: float  # % of the execs reported with process.executable
    stopped: float  # % of the execs reported stopped with exit code
    p99_ms: float


def role_cpu(pids: dict[int, str], before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds used between two readings, summed by role."""
    used: dict[str, float] = {}
    for pid in before.keys() & after.keys():
        used[pids[pid]] = used.get(pids[pid], 0.0) + after[pid] - before[pid]
    return used


def started_lines(tail: OutputTail, since: int) -> int:
    """process_started lines the output received after line `since`."""
    return sum(b'"process_started"' in line for _, line in tail.lines[since:])


def per_exec(idle: tuple[float, int, float], run: tuple[float, int, float]) -> tuple[float, float]:
    """(a, b) of CPU = a x seconds + b x execs through two windows, each (seconds, execs, CPU seconds)."""
    (t1, n1, c1), (t2, n2, c2) = idle, run
    b = (c2 * t1 - c1 * t2) / (n2 * t1 - n1 * t2)
    return (c1 - b * n1) / t1, b


def start_profiles(agent: Agent, directory: Path, code: str, seconds: float) -> list[subprocess.Popen]:
    """py-spy record each profiled process of the agent for `seconds` (flame-graph input, idle threads left out)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    for pid, role in agent.processes().items():
        if role in PROFILED_ROLES:
            output = directory / f"{code}-{role}.txt"
            recorders.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                 "--duration", str(int(seconds)), "--output", str(output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return recorders


def measure(code: str, repo: Path, rate: float, seconds: float, idle: float, settle: float,
            profile: Path | None) -> Round:
    workdir = Path(tempfile.mkdtemp(prefix="hostaudit-exec-cost-"))
    agent = Agent(workdir, repo)
    tail = OutputTail(agent.output)
    tail.start()
    events = Events(tail)
    try:
        wait_until(lambda: agent.role_pid("process"), 20, "the process collector", agent)
        wait_until(events.first_state_report, 60, "the first state report in the output file", agent)
        time.sleep(settle)
        pids = agent.processes()
        idle_lines, idle_before, idle_started = len(tail.lines), cpu_seconds(pids), time.monotonic()
        time.sleep(idle)
        idle_after, idle_wall = cpu_seconds(pids), time.monotonic() - idle_started
        idle_seen = started_lines(tail, idle_lines)
        idle_used = role_cpu(pids, idle_before, idle_after)
        execs = int(rate * seconds)
        recorders = start_profiles(agent, profile, code, seconds + 2) if profile else []
        events.skip_to_now()
        tail.interval = 0.002
        run_lines, run_before, run_started = len(tail.lines), cpu_seconds(pids), time.monotonic()
        launch = launch_python(execs, rate)
        seen = drain(events, launch, quiet=5.0, timeout=30.0)
        run_after, run_wall = cpu_seconds(pids), time.monotonic() - run_started
        run_seen = started_lines(tail, run_lines)
        for recorder in recorders:
            recorder.wait(30)
        used = role_cpu(pids, run_before, run_after)
        costs = {role: per_exec((idle_wall, idle_seen, idle_used.get(role, 0.0)), (run_wall, run_seen, used[role]))
                 for role in used}
        per_exec_us = {role: b * 1e6 for role, (_, b) in costs.items()}
        per_exec_us["agent"] = sum(per_exec_us.values())
        capture = summarise(launch, seen)
        return Round(code, execs, (idle_seen, run_seen), per_exec_us, 100 * sum(a for a, _ in costs.values()),
                     100 * capture.with_exe / execs, 100 * capture.stopped_with_code / execs, capture.latency_ms[1])
    finally:
        agent.stop()
        tail.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def print_report(rounds: list[Round], codes: list[str], rate: float) -> None:
    roles = sorted({role for run in rounds for role in run.per_exec_us if role != "agent"},
                   key=lambda role: -statistics.median(run.per_exec_us.get(role, 0.0) for run in rounds))
    print(f"\nµs of CPU per exec (process_started + process_stopped to the output file), {rate:g} execs/s of "
          f"/bin/true; median (range) of {len(rounds) // len(codes)} rounds. CPU s per 1,000 execs = ms per exec.\n")
    print("| process | " + " | ".join(codes) + " |")
    print("|---|" + "---|" * len(codes))
    for role in [*roles, "agent"]:
        cells = []
        for code in codes:
            values = [run.per_exec_us.get(role, 0.0) for run in rounds if run.code == code]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})")
        label = "**whole agent**" if role == "agent" else f"`hostaudit: {role}`" if "-" in role or role in (
            "process", "producer", "supervisor", "forkserver") else role
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| round | code | execs run | process_started seen, idle window / run | with executable | stopped with "
          "exit code | p99 exec -> output | idle, agent |")
    print("|---|---|---|---|---|---|---|---|")
    for index, run in enumerate(rounds):
        print(f"| {index // len(codes) + 1} | {run.code} | {run.execs} | {run.seen[0]} / {run.seen[1]} | "
              f"{run.with_exe:.2f}% | {run.stopped:.2f}% | "
              f"{run.p99_ms:.0f} ms | {run.idle_percent:.2f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                        help="a checkout to measure (repeatable; default: this tree as 'this')")
    parser.add_argument("--rate", type=float, default=200.0, help="execs of /bin/true a second")
    parser.add_argument("--seconds", type=float, default=25.0, help="how long the execs run")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle window subtracted")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the first state report")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="py-spy each Python process of the agent during the runs "
                        "into this directory (raw folded stacks; skews the CPU figures: profile, then measure)")
    args = parser.parse_args()
    audit_state.warn_if_enabled()
    if os.geteuid() != 0:
        sys.exit("bench_exec_cost.py needs root (the agent subscribes to the kernel's process connector)")
    codes = dict(item.split("=", 1) for item in args.code) if args.code else {"this": str(REPO)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rounds = []
    names = list(codes)
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            rounds.append(measure(name, Path(codes[name]).resolve(), args.rate, args.seconds, args.idle,
                                  args.settle, args.profile))
            print(f"round {index + 1}, {name}: {rounds[-1].per_exec_us['agent']:.0f} µs per exec", file=sys.stderr)
    print_report(rounds, names, args.rate)


if __name__ == "__main__":
    main()
