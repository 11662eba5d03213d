"""Benchmark of the package dataset: a steady poll with nothing changed, and full reads of a generated dpkg
database of 3,000 packages side by side with `dpkg-query -W --admindir=...` on the same files."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from actors.datasets import DatasetContext  # noqa: E402
from actors.datasets.package.dataset import create  # noqa: E402
from actors.datasets.package import dpkg  # noqa: E402
from actors.datasets.package.dpkg import DpkgReader  # noqa: E402
from cpu import cpu_children  # noqa: E402  (ops/bench/cpu.py)
import audit_state  # noqa: E402  (ops/bench/audit_state.py)

LISTED_AT = 1_700_000_000


def multi_arch(index: int) -> bool:
    """Every fifth amd64 package is Multi-Arch: same (its file list is then <name>:<arch>.list)."""
    return index % 5 == 0 and index % 4 != 0


def stanza(index: int, version: str) -> str:
    """One stanza shaped like a real one (about 1 KB: dependencies, conffiles, a multi-line description)."""
    name = f"libbench{index:05d}-{'tools' if index % 3 else 'data'}"
    return (
        f"Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
        f"Installed-Size: {100 + index % 977}\nMaintainer: Debian Bench Team <bench@lists.example.org>\n"
        f"Architecture: {'all' if index % 4 == 0 else 'amd64'}\n"
        + ("Multi-Arch: same\n" if multi_arch(index) else "")
        + f"Source: bench{index // 3:05d}\nVersion: {version}\n"
        f"Depends: libc6 (>= 2.36), libgcc-s1 (>= 3.0), zlib1g (>= 1:1.2.0), libbench{(index + 1) % 3000:05d}-data\n"
        + (f"Conffiles:\n /etc/{name}/{name}.conf 0123456789abcdef0123456789abcdef\n" if index % 7 == 0 else "")
        + f"Description: benchmark package number {index} with a one-line summary\n"
        " This is the long description of the package, as Debian packages have one:\n"
        " several lines of prose that a parser must skip over to find the next field.\n .\n"
        " It goes on for a while, like real descriptions do.\n"
        + (f"Homepage: https://bench.example.org/{name}\n" if index % 2 else "")
        + "\n"
    )


def write_database(root: Path, count: int, changed: int | None = None) -> Path:
    """Write <root>/var/lib/dpkg (status, updates/, info/*.list) with `count` packages; `changed` gets a new
    version. Returns the admin directory."""
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    (admin / "updates").mkdir(exist_ok=True)
    text = "".join(stanza(index, "2.0-1" if index == changed else "1.0-1") for index in range(count))
    (admin / "status-new").write_text(text)
    (admin / "status-new").replace(admin / "status")
    for index in range(count):
        name = f"libbench{index:05d}-{'tools' if index % 3 else 'data'}"
        arch = "all" if index % 4 == 0 else "amd64"
        path = admin / "info" / (f"{name}:{arch}.list" if multi_arch(index) else f"{name}.list")
        if not path.exists():
            path.write_text(f"/usr/share/doc/{name}\n")
            os.utime(path, (LISTED_AT, LISTED_AT))
    return admin


def cpu_of(action) -> float:
    """CPU seconds of `action()`; what it returns is freed after the measure (freeing a result is not reading)."""
    started = time.process_time()
    result = action()
    elapsed = time.process_time() - started
    del result
    return elapsed


# The fields the dataset reads, install time included (dpkg-query stats each file list for it, as we do).
SAME_FIELDS = ("${Package}\\t${Version}\\t${Architecture}\\t${Installed-Size}\\t${db-fsys:Last-Modified}\\t"
               "${binary:Summary}\\t${Homepage}\\n")


def dpkg_query_cpu(admin: Path, *extra: str) -> float:
    before = cpu_children()
    subprocess.run(["dpkg-query", "-W", f"--admindir={admin}", *extra], stdout=subprocess.DEVNULL, check=True)
    return cpu_children() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packages", type=int, default=3000, help="packages in the generated status file")
    parser.add_argument("--runs", type=int, default=9, help="runs to take the median of")
    args = parser.parse_args()
    audit_state.warn_if_enabled()
    if shutil.which("dpkg-query") is None:
        sys.exit("bench_package.py compares with dpkg-query: install dpkg")
    with tempfile.TemporaryDirectory(prefix="hostaudit-bench-package-") as directory:
        root = Path(directory)
        admin = write_database(root, args.packages)
        size = (admin / "status").stat().st_size
        # Files written this second are not trusted yet (etc_files.RACY_WINDOW_NS): wait until they are.
        time.sleep(2.1)

        dataset = create(DatasetContext(hostfs=root, options={"databases": ["dpkg"]}, host_id="bench-host"))
        previous = dataset.observe()
        assert len(previous["databases"]["dpkg"]["packages"]) == args.packages

        def steady() -> None:
            dataset.diff(previous, dataset.observe(), at_startup=False)

        steady_runs = [cpu_of(steady) for _ in range(max(args.runs, 101))]
        cold, warm, query, query_same = [], [], [], []
        for run in range(args.runs):
            # In turn first and last: a read right after a child process ran measures slower (cold caches).
            if run % 2:
                cold.append(cpu_of(lambda: DpkgReader(root).read()))
            query.append(dpkg_query_cpu(admin))
            query_same.append(dpkg_query_cpu(admin, f"--showformat={SAME_FIELDS}"))
            if not run % 2:
                cold.append(cpu_of(lambda: DpkgReader(root).read()))
            reader = DpkgReader(root)
            reader.read()
            write_database(root, args.packages, changed=run)  # one package upgraded
            warm.append(cpu_of(reader.read))
            write_database(root, args.packages)
        native, cold_python = dpkg._dpkg_native, []
        try:  # the same cold read on the pure-Python path (a host where the C speed-ups were not built)
            dpkg._dpkg_native = None
            cold_python = [cpu_of(lambda: DpkgReader(root).read()) for _ in range(args.runs)]
        finally:
            dpkg._dpkg_native = native
        full_ratio = statistics.median(cold) / statistics.median(query)
        warm_ratio = statistics.median(warm) / statistics.median(query)
        same_ratio = statistics.median(cold) / statistics.median(query_same)
        print("| measure | value |")
        print("|---|---|")
        print(f"| status file | {args.packages} packages, {size / 1e6:.1f} MB, one info/*.list each |")
        print(f"| (1) steady poll, nothing changed (observe + diff), CPU, median of {len(steady_runs)} | "
              f"{statistics.median(steady_runs) * 1e6:.0f} µs (goal < 1 ms) |")
        print(f"| (2) full read, cold (parse every stanza, stat every list), CPU, median of {args.runs} | "
              f"{statistics.median(cold) * 1e3:.1f} ms{'' if native else ' (C speed-ups NOT built)'} |")
        print(f"| (2b) the same on the pure-Python path (no C speed-ups), CPU, median | "
              f"{statistics.median(cold_python) * 1e3:.1f} ms |")
        print(f"| (3) re-read after one package changed (the dataset's case), CPU, median | "
              f"{statistics.median(warm) * 1e3:.1f} ms |")
        print(f"| `dpkg-query -W --admindir=...` on the same files, CPU, median | "
              f"{statistics.median(query) * 1e3:.1f} ms |")
        print(f"| `dpkg-query -W` printing the same fields, install time included (`db-fsys:Last-Modified`: "
              f"it stats every list too), CPU, median | {statistics.median(query_same) * 1e3:.1f} ms |")
        print(f"| ratio (2) / dpkg-query (goal <= 0.5) | {full_ratio:.2f}x |")
        print(f"| ratio (2) / dpkg-query with the same fields | {same_ratio:.2f}x |")
        print(f"| ratio (3) / dpkg-query | {warm_ratio:.2f}x |")
        print(f"| ratio (2b) / dpkg-query | {statistics.median(cold_python) / statistics.median(query):.2f}x |")


if __name__ == "__main__":
    main()
