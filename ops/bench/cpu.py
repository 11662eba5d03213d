"""CPU-time helpers shared by the benchmarks: this process, its children, the host, and another process tree."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_and_children_seconds() -> float:
    """CPU seconds of this process and of its reaped children (the execs a bench ran)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def host_busy_seconds() -> float:
    """CPU seconds the whole host has spent busy (every core, all but idle, iowait and steal) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "steal", 0.0)


@dataclass(frozen=True)
class TreeCpu:
    """CPU seconds (user + system) of each process of a tree at one moment, keyed by (pid, start ticks)."""

    names: dict[tuple[int, int], str]
    seconds: dict[tuple[int, int], float]


def process_name(pid: int, root: int) -> str:
    """A process's title (`hostaudit: process`, as setproctitle set it), else its program's base name;
    `... (root)` for the root of the tree."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        first = cmdline.read().split(b"\0")[0].decode(errors="replace")
    name = first if first.startswith("hostaudit: ") else os.path.basename(first.split(" ")[0]) or "?"
    return f"{name} (root)" if pid == root else name


def tree_cpu(root: int) -> TreeCpu:
    """utime + stime from /proc/<pid>/stat of `root` and every descendant alive now."""
    names, seconds = {}, {}
    try:
        pids = [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
    except psutil.NoSuchProcess:
        return TreeCpu({}, {})
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()  # fields from the 3rd (state) on
            key = (pid, int(fields[19]))  # starttime (22nd field) tells a reused pid apart
            seconds[key] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (14th, 15th)
            names[key] = process_name(pid, root)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return TreeCpu(names, seconds)


def cpu_by_name(before: TreeCpu, after: TreeCpu) -> dict[str, float]:
    """CPU seconds used between two snapshots, summed by process name; a process started meanwhile counts
    from zero, one that exited meanwhile is lost (its last seconds are not in `after`)."""
    used: dict[str, float] = {}
    for key, seconds in after.seconds.items():
        name = after.names[key]
        used[name] = used.get(name, 0.0) + seconds - before.seconds.get(key, 0.0)
    return used
