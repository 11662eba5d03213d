"""Measures the whole agent's memory (PSS and RSS of every hostaudit process) with all built datasets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from actors.datasets import BUILT_DATASETS  # noqa: E402


def agent_processes(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def measure(settle_seconds: float = 8.0) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as workdir:
        datasets = ", ".join(BUILT_DATASETS)
        command = [sys.executable, "-m", "actors.cli", "run", "-E", f"path.data={workdir}/data",
                   "-E", f"hostaudit.modules=[{{module: system, datasets: [{datasets}], period: 1s}}]",
                   "-E", "output.console.enabled=false", "-E", "output.file.enabled=true",
                   "-E", f"output.file.path={workdir}/out"]
        agent = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            time.sleep(settle_seconds)  # a benchmark, not a test: let every collector finish its first cycles
            rows = []
            for process in agent_processes(psutil.Process(agent.pid)):
                try:
                    info = process.memory_full_info()
                    rows.append((" ".join(process.cmdline())[:40], info.pss / 2**20, info.rss / 2**20))
                except psutil.NoSuchProcess:
                    continue
            return rows
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(15)


def main() -> None:
    rows = measure()
    print(f"Datasets: {', '.join(BUILT_DATASETS)}\n")
    print("| process | PSS MiB | RSS MiB |\n|---|---|---|")
    for name, pss, rss in rows:
        print(f"| {name} | {pss:.1f} | {rss:.1f} |")
    print(f"| **whole agent** | **{sum(r[1] for r in rows):.1f}** | {sum(r[2] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
