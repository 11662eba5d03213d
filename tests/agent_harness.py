"""Runs the real `hostaudit` command as a subprocess for tests, and reads back what it wrote."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Self

import psutil

from actors.ecs import assert_ecs
from tests.sample_support import EVENT_FIELDS

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def parse_ndjson(data: bytes) -> list[dict[str, Any]]:
    """Every complete JSON line of `data`, each checked against the ECS field table and the declared
    system.audit.* fields."""
    events = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a line still being written
        event = json.loads(line)
        assert_ecs(event, EVENT_FIELDS)
        events.append(event)
    return events


def read_ndjson(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every complete JSON line of the files, each checked against the ECS field table."""
    return [event for path in paths if path.exists() for event in parse_ndjson(path.read_bytes())]


class HostauditProcess:
    """One `hostaudit` subcommand as a subprocess in its own session, its stderr (the log) in a file."""

    def __init__(self, log_path: Path, overrides: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        self.log_path = log_path
        self.overrides = list(overrides)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Self":
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log_file,
                                        env=self.env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        wait_for(lambda: text in self.log(), timeout, f"log line containing {text!r}; log:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL the process and every process of its session (test clean-up)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


class Agent(HostauditProcess):
    """One `hostaudit run` subprocess with the file output under a temporary directory."""

    def __init__(self, workdir: Path, config: str | None = None, overrides: Iterable[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = workdir / "data"
        self.output_dir = workdir / "out"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "hostaudit.yml"
            self.config_path.write_text(config)
        super().__init__(workdir / "agent.stderr",
                         [f"path.data={self.data}", "output.console.enabled=false", "output.file.enabled=true",
                          f"output.file.path={self.output_dir}", *overrides], env)
        self._parsed: dict[int, tuple[int, list[dict[str, Any]]]] = {}  # inode -> (bytes parsed, their events)

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "actors.cli", "run"]
        if self.config_path is not None:
            command += ["-c", str(self.config_path)]
        for override in self.overrides:
            command += ["-E", override]
        return command

    def events(self) -> list[dict[str, Any]]:
        """Every event written so far, oldest file first. Each file is parsed (and ECS-checked) once, then only
        what was appended since: a poll costs what is new, not the whole output (which grows to thousands of
        events in a soak and took seconds to re-parse on a loaded machine). Rotation renames, so files are
        followed by inode."""
        events: list[dict[str, Any]] = []
        parsed: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        for path in sorted(self.output_dir.glob("*.ndjson*"), reverse=True):
            try:
                with path.open("rb") as handle:
                    status = os.fstat(handle.fileno())
                    offset, seen = self._parsed.get(status.st_ino, (0, []))
                    if status.st_size < offset:  # truncated (a failed write is rolled back): start over
                        offset, seen = 0, []
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                continue  # rotated out of existence meanwhile
            complete = chunk[:chunk.rfind(b"\n") + 1]
            if complete:
                seen, offset = seen + parse_ndjson(complete), offset + len(complete)
            parsed[status.st_ino] = (offset, seen)
            events += seen
        self._parsed = parsed
        return events

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        return wait_for(lambda: next((e for e in self.events() if predicate(e)), None), timeout,
                        f"{what}; agent log:\n{self.log()[-3000:]}")

    def role_pid(self, role: str) -> int | None:
        """The pid of the agent's child process titled `hostaudit: <role>`, if running."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                if child.cmdline()[:1] == [f"hostaudit: {role}"] and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                continue
        return None

    def committed_sequence(self, dataset: str = "host") -> int:
        """The last event.sequence the dataset spooled and committed (0 before its first commit)."""
        if not (self.data / "state.db").exists():
            return 0
        try:
            with sqlite3.connect(self.data / "state.db") as db:
                row = db.execute("SELECT sequence FROM dataset_state WHERE dataset = ?", (dataset,)).fetchone()
        except sqlite3.OperationalError:  # created but its table not yet (the agent is starting)
            return 0
        return int(row[0]) if row else 0

    def wait_for_role(self, role: str, timeout: float, not_pid: int | None = None) -> int:
        return wait_for(lambda: (pid := self.role_pid(role)) and pid != not_pid and pid, timeout,
                        f"process 'hostaudit: {role}'; agent log:\n{self.log()[-3000:]}")

