"""Benchmark of the process dataset: poll cost against ps, exec capture through the connector, idle overhead."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from actors.datasets import DatasetContext  # noqa: E402
from actors.datasets.process.dataset import STARTED, STOPPED, ProcessDataset, create  # noqa: E402
from actors.datasets.process.proc_connector import ProcessExec, ProcessExit  # noqa: E402
import audit_state  # noqa: E402  (ops/bench/audit_state.py)

PS_COMMAND = ["ps", "-e", "-o", "pid,ppid,user,lstart,args"]
TRUE = os.path.realpath("/bin/true")


def dataset(backend: str) -> ProcessDataset:
    return create(DatasetContext(hostfs=Path("/"), options={"backend": backend}, host_id="bench-host-id"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


# ---------------------------------------------------------------------------------------------------------
# (1) Steady-state poll cost with many long-lived processes, against ps
# ---------------------------------------------------------------------------------------------------------

def bench_poll(extra: int, runs: int) -> dict[str, Any]:
    sleepers = [subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL) for _ in range(extra)]
    try:
        ds = dataset("procfs")
        started = time.process_time()
        previous = ds.observe()
        first_scan = time.process_time() - started
        ours, theirs = [], []
        for _ in range(runs):
            started = time.process_time()
            current = ds.observe()
            ds.diff(previous, current, at_startup=False)
            ours.append(time.process_time() - started)
            previous = current
            before = children_cpu()
            subprocess.run(PS_COMMAND, stdout=subprocess.DEVNULL, check=True)
            theirs.append(children_cpu() - before)
        return {"processes": len(previous["processes"]), "first_scan": first_scan,
                "ours": statistics.median(ours), "ps": statistics.median(theirs)}
    finally:
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()


# ---------------------------------------------------------------------------------------------------------
# (2) Capture of execs at full speed through the connector
# ---------------------------------------------------------------------------------------------------------

def bench_capture(execs: int, loops: int, runtime_like: bool = False) -> dict[str, Any]:
    """Run `execs` /bin/true in `loops` parallel shell loops and read them through the connector. With
    `runtime_like`, each batch (50 ms, as the runtime's pump) is folded and every event encoded as ECS JSON
    right away in the reading thread, as the collector does, so that work competes with the enriching
    thread for the GIL; otherwise the items are only collected and folded at the end."""
    ds = dataset("netlink")
    stream = ds.open_stream()
    assert stream is not None
    try:
        committed = ds.observe()
        each = execs // loops
        script = f"for i in $(seq {each}); do /bin/true; done"
        cpu_before = time.process_time()
        shells = [subprocess.Popen(["bash", "-c", script]) for _ in range(loops)]
        shell_pids = {shell.pid for shell in shells}
        items: list[Any] = []
        events: list[Any] = []
        latencies: list[float] = []
        exits = 0
        deadline = time.monotonic() + 120
        while exits < (each + 1) * loops and time.monotonic() < deadline:
            batch: list[Any] = []
            batch_end = time.monotonic() + (0.05 if runtime_like else 0.0)
            while True:
                batch += stream.read(0.2 if not runtime_like else max(0.0, batch_end - time.monotonic()))
                if not runtime_like or time.monotonic() >= batch_end:
                    break
            ready = time.time()
            for item in batch:
                if isinstance(item, ProcessExec):
                    latencies.append(ready - item.time)
                elif isinstance(item, ProcessExit) and item.ppid in shell_pids:
                    exits += 1
            items += batch
            if runtime_like:
                committed, folded = ds.apply_stream(committed, batch)
                for event in folded:
                    json.dumps(event.stamped(1).to_document({"agent": {"name": "bench"}}), separators=(",", ":"))
                events += folded
        read_cpu = time.process_time() - cpu_before
        for shell in shells:
            shell.wait()
        started = time.process_time()
        if not runtime_like:
            committed, events = ds.apply_stream(committed, items)
        apply_cpu = time.process_time() - started
        # The loops' children: every /bin/true, plus one `seq` per loop (its command substitution).
        children = [event for event in events
                    if event.fields["process"].get("parent", {}).get("pid") in shell_pids]
        runs = [event for event in children if event.action == STARTED]
        stops = [event for event in children if event.action == STOPPED]
        with_exe = sum(event.fields["process"].get("executable") == TRUE for event in runs)
        delays = [item.delay_ns / 1e6 for item in items if isinstance(item, ProcessExec)]
        return {"execs": each * loops, "reported": len(runs), "stopped": len(stops), "with_exe": with_exe,
                "lost": stream.lost(), "p50_ms": percentile(latencies, 0.5) * 1e3,
                "p99_ms": percentile(latencies, 0.99) * 1e3, "recv_p99_ms": percentile(delays, 0.99),
                "read_cpu": read_cpu, "apply_cpu": apply_cpu}
    finally:
        stream.close()


# ---------------------------------------------------------------------------------------------------------
# (3) Idle overhead of observe + diff at a 1 s period
# ---------------------------------------------------------------------------------------------------------

def bench_idle(seconds: float) -> dict[str, Any]:
    ds = dataset("procfs")
    previous = ds.observe()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    next_poll = wall_start
    while time.monotonic() - wall_start < seconds:
        next_poll += 1.0
        time.sleep(max(0.0, next_poll - time.monotonic()))
        current = ds.observe()
        ds.diff(previous, current, at_startup=False)
        previous = current
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    return {"processes": len(previous["processes"]), "cpu_percent": 100 * cpu / wall, "seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extra", type=int, default=2000, help="long-lived processes to add for (1)")
    parser.add_argument("--runs", type=int, default=7, help="polls (and ps runs) to take the median of")
    parser.add_argument("--execs", type=int, default=5000, help="execs for the capture test (2)")
    parser.add_argument("--loops", type=int, default=2, help="parallel shell loops running them")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle polling for (3)")
    args = parser.parse_args()
    audit_state.warn_if_enabled()
    if os.geteuid() != 0:
        sys.exit("bench_process.py needs root (every /proc entry and the process connector)")

    poll = bench_poll(args.extra, args.runs)
    capture = bench_capture(args.execs, args.loops)
    runtime_like = bench_capture(args.execs, args.loops, runtime_like=True)
    idle = bench_idle(args.idle)
    ratio = poll["ours"] / poll["ps"]
    print("| measure | value |")
    print("|---|---|")
    print(f"| (1) processes scanned | {poll['processes']} |")
    print(f"| (1) first scan (reads + hashes everything), CPU | {poll['first_scan'] * 1e3:.1f} ms |")
    print(f"| (1) steady poll (observe + diff), CPU, median of {args.runs} | {poll['ours'] * 1e3:.1f} ms |")
    print(f"| (1) `{' '.join(PS_COMMAND)}`, CPU, median | {poll['ps'] * 1e3:.1f} ms |")
    print(f"| (1) ratio poll / ps (goal <= 0.5) | {ratio:.2f}x |")
    print(f"| (2) execs run ({args.loops} parallel loops of /bin/true) | {capture['execs']} |")
    print(f"| (2) process_started / process_stopped from the stream (incl. 1 `seq` per loop) | "
          f"{capture['reported']} / {capture['stopped']} (lost {capture['lost']}) |")
    print(f"| (2) with executable | {capture['with_exe']} ({100 * capture['with_exe'] / capture['execs']:.1f}%) |")
    print(f"| (2) exec -> item ready, p50 / p99 | {capture['p50_ms']:.2f} ms / {capture['p99_ms']:.2f} ms |")
    print(f"| (2) exec -> datagram received, p99 | {capture['recv_p99_ms']:.2f} ms |")
    print(f"| (2) CPU to read + enrich / to apply (events) | {capture['read_cpu']:.2f} s / "
          f"{capture['apply_cpu']:.2f} s |")
    print(f"| (2b) same, each 50 ms batch folded and ECS-encoded at once (the runtime's work): with "
          f"executable | {runtime_like['with_exe']} ({100 * runtime_like['with_exe'] / runtime_like['execs']:.1f}%)"
          f", p99 {runtime_like['p99_ms']:.1f} ms |")
    print(f"| (3) idle poll at 1 s, {idle['processes']} processes, {idle['seconds']:.0f} s | "
          f"{idle['cpu_percent']:.3f}% of one core |")


if __name__ == "__main__":
    main()
