"""Benchmark of the login dataset: records per second read from one synthetic wtmp (250 MB by default), side by
side with `last -f FILE` and `utmpdump FILE` on the same file in the same run; peak RSS while reading it; the
idle cost of the stat-poll stream."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cpu import cpu_children, cpu_self  # noqa: E402  (ops/bench/cpu.py)

RECORD = 384
BLOCK_RECORDS = 20_000


def write_wtmp(path: Path, size: int) -> int:
    """A wtmp of about `size` bytes of a busy host's records (boots, ssh sessions from IPv4 and IPv6); the count."""
    from tests.utmp_files import synthetic_history

    records = size // RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("wb") as handle:
        while written < records:
            count = min(BLOCK_RECORDS, records - written)
            handle.write(synthetic_history(count, start=1_600_000_000.0 + written * 3.7))
            written += count
    return written


def run_tool(command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds of a C tool writing to /dev/null."""
    cpu_before, started = cpu_children(), time.monotonic()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return {"seconds": time.monotonic() - started, "cpu": cpu_children() - cpu_before}


def run_child(mode: str, root: Path) -> dict[str, Any]:
    """One measurement in a fresh interpreter (so its peak RSS is its own)."""
    output = subprocess.run([sys.executable, __file__, "--child", mode, str(root)], capture_output=True, text=True,
                            check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def child(mode: str, root: Path) -> None:
    """Child process: read the wtmp under `root` one way; print what it measured as JSON."""
    from actors.datasets import DatasetContext
    from actors.datasets.login import dataset as login_dataset
    from actors.datasets.login import files, utmp

    path = root / "var/log/wtmp"
    cpu_before, started = cpu_self(), time.monotonic()
    records = events = passes = 0
    if mode == "parse":  # the reader and the parser alone: what `last` does before formatting
        with path.open("rb") as handle:
            offset, before = 0, b""
            while True:
                handle.seek(offset)
                scan = files.scan(handle, offset, login_dataset.RECORDS_PER_PASS, before)
                for _, raw in scan.records:
                    utmp.parse(raw)
                records += scan.examined
                offset, before = scan.end, scan.last
                passes += 1
                if scan.at_end:
                    break
    elif mode == "advance":  # the dataset's first run: every record, every event built
        dataset = login_dataset.create(DatasetContext(hostfs=root, options={"btmp_file_pattern": ""}))
        snapshot: Any = None
        while True:
            snapshot, new = dataset.advance(snapshot)
            events += len(new)
            passes += 1
            if not dataset.more.is_set():
                break
        records = path.stat().st_size // RECORD
    elif mode == "runner":  # and through the collector: stamped, ECS-encoded, spooled (fsync) and committed
        from actors.runtime.collector import DatasetRunner
        from actors.runtime.spool import SpoolWriter
        from actors.runtime.state import StateStore

        data = Path(tempfile.mkdtemp(prefix="bench-login-data-"))
        try:
            dataset = login_dataset.create(DatasetContext(hostfs=root, options={"btmp_file_pattern": ""}))
            runner = DatasetRunner(dataset, 3600.0, StateStore(data / "state.db"),
                                   SpoolWriter(data / "spool" / "login", segment_bytes=64 << 20),
                                   data / "spool", 1 << 40, common=lambda: {"agent": {"type": "hostaudit"}})
            while True:
                events += runner.cycle().events
                passes += 1
                if not dataset.more.is_set():
                    break
            runner.close()
        finally:
            shutil.rmtree(data, ignore_errors=True)
        records = path.stat().st_size // RECORD
    elif mode != "baseline":
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"seconds": time.monotonic() - started, "cpu": cpu_self() - cpu_before, "records": records,
                      "events": events, "passes": passes,
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def idle_cost(root: Path, seconds: float) -> float:
    """Percent of one core the stream's stat poll costs while nothing changes (as pump_stream calls it)."""
    from actors.datasets import DatasetContext
    from actors.datasets.login import dataset as login_dataset

    dataset = login_dataset.create(DatasetContext(hostfs=root))
    watch = dataset.open_stream()
    assert watch is not None
    watch.read(0.0)  # the first look
    cpu_before = time.thread_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        watch.read(0.05)
    watch.close()
    return 100 * (time.thread_time() - cpu_before) / seconds


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=float, default=250, help="size of the synthetic wtmp (MB, 10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each reader, interleaved; medians are shown")
    parser.add_argument("--runner-runs", type=int, default=1,
                        help="runs through the collector (ECS encoding and spooling; minutes at 250 MB)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle stream polling to measure")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    for tool in ("last", "utmpdump"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} (util-linux) is needed: apt-get install util-linux")
    workdir = Path(tempfile.mkdtemp(prefix="bench-login-"))
    try:
        root = workdir / "hostfs"
        (root / "etc").mkdir(parents=True)
        (root / "etc/passwd").write_text("".join(f"user{index}:x:{1000 + index}:{1000 + index}::/home/u:/bin/sh\n"
                                                 for index in range(50)))
        path = root / "var/log/wtmp"
        began = time.monotonic()
        records = write_wtmp(path, int(args.size_mb * 1e6))
        print(f"wrote {path.stat().st_size / 1e6:.1f} MB, {records:,} records in {time.monotonic() - began:.0f} s",
              file=sys.stderr)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in ("last", "utmpdump", "parse", "advance",
                                                                          "runner")}
        baseline = run_child("baseline", root)
        for round_index in range(args.runs):
            order = list(results)
            order = order[round_index % len(order):] + order[:round_index % len(order)]
            for name in order:
                if name == "runner" and round_index >= args.runner_runs:
                    continue
                if name == "last":
                    results[name].append(run_tool(["last", "-f", str(path)]))
                elif name == "utmpdump":
                    results[name].append(run_tool(["utmpdump", str(path)]))
                else:
                    results[name].append(run_child(name, root))
                print(f"round {round_index + 1}: {name} {results[name][-1]['seconds']:.2f} s", file=sys.stderr)
        idle = idle_cost(root, args.idle)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def rate(name: str) -> float:
        return records / median(results[name], "seconds")

    last_rate = rate("last")
    print(f"Synthetic wtmp: {records * RECORD / 1e6:.0f} MB, {records:,} records; medians of {args.runs} runs "
          f"({args.runner_runs} through the collector); load average {os.getloadavg()[0]:.1f}.\n")
    print("| reader | wall s | CPU s | records/s | vs `last -f` | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, label in (("last", "`last -f FILE` (util-linux, C; prints the sessions)"),
                        ("utmpdump", "`utmpdump FILE` (util-linux, C; prints every record)"),
                        ("parse", "hostaudit: read + parse every record (files.scan, utmp.parse)"),
                        ("advance", "hostaudit: dataset first run, every event built (advance)"),
                        ("runner", "hostaudit: through the collector, ECS-encoded, spooled, committed")):
        rss = f"{median(results[name], 'maxrss_mib'):.0f} MiB" if name not in ("last", "utmpdump") else "—"
        print(f"| {label} | {median(results[name], 'seconds'):.2f} | {median(results[name], 'cpu'):.2f} | "
              f"{rate(name):,.0f} | {rate(name) / last_rate:.2f}x | {rss} |")
    events = results["advance"][0]["events"]
    print(f"\nEvents from the file: {events:,}; passes of the dataset: {results['advance'][0]['passes']} "
          f"(8,192 records each). A Python interpreter with the dataset imported: {baseline['maxrss_mib']:.0f} "
          f"MiB RSS.")
    print(f"Idle stream (stat poll every 0.25 s, read in 50 ms slices): {idle:.3f}% of one core.")


if __name__ == "__main__":
    main()
