"""Shared plumbing of the JVM services ops/ runs for tests and benchmarks (Kafka, OpenSearch): Java, Maven jar caches, ports, and the JvmService lifecycle and CLI."""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

MARKER_NAME = ".complete"  # written into lib/ after a successful, verified copy
LOG_TAIL_LINES = 40


class JvmError(RuntimeError):
    """Something needed to run a JVM service failed (java/mvn missing, fetch, compile, start)."""


def pom_property(pom: Path, name: str) -> str:
    """The value of <properties><name> in a pom.xml (the single source of truth for a pinned version)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find(f"m:properties/m:{name}", ns)
    if node is None or not (node.text or "").strip():
        raise JvmError(f"no <{name}> property in {pom}")
    return node.text.strip()


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def read_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file from byte offset on (a message, never raises)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return tail(f.read().decode("utf-8", "replace"), lines)
    except OSError as exc:
        return f"(no log: {exc})"


def exclusive_lock(path: Path, timeout: float) -> int:
    """Take an exclusive flock on path (bounded wait); returns the fd to close to release it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise JvmError(f"timed out after {timeout:.0f}s waiting for the lock {path}") from None
            time.sleep(0.2)


def _lib_complete(lib: Path, identity: Mapping[str, str]) -> bool:
    try:
        info = json.loads((lib / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if any(info.get(key) != value for key, value in identity.items()) or not info.get("jars"):
        return False
    return all((lib / jar).is_file() for jar in info["jars"])


def fetch_classpath(pom: Path, lib: Path, *, identity: Mapping[str, str], lib_property: str,
                    needed: Sequence[str], what: str, timeout: float = 900.0) -> Path:
    """Make sure the pom's runtime classpath is in the jar cache `lib` (Maven runs only if it is not); returns lib.

    `identity` (e.g. {"kafka_version": "4.3.1"}) is written into lib/.complete and must match for the cache to
    count; `lib_property` is the pom property naming the output dir; every prefix in `needed` must be among the
    copied jars. The copy goes to lib.tmp-PID and is renamed under an flock, so parallel processes fetch once.
    """
    if _lib_complete(lib, identity):
        return lib
    cache = lib.parent
    cache.mkdir(parents=True, exist_ok=True)
    fd = exclusive_lock(cache / ".fetch.lock", timeout)
    try:
        if _lib_complete(lib, identity):  # another process fetched while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise JvmError(f"mvn not found: Maven is needed once to fetch the {what} jars into {lib} "
                           "(apt-get install -y maven)")
        tmp = cache / f"lib.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
               "dependency:copy-dependencies", f"-D{lib_property}={tmp}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise JvmError(f"mvn timed out after {timeout:.0f}s fetching {what}") from exc
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise JvmError(f"mvn failed (exit {proc.returncode}): {tail(proc.stdout + proc.stderr)}")
        jars = sorted(p.name for p in tmp.glob("*.jar"))
        for prefix in needed:
            if not any(j.startswith(prefix) for j in jars):
                shutil.rmtree(tmp, ignore_errors=True)
                raise JvmError(f"mvn succeeded but {prefix}* is missing from the copied jars: {jars}")
        (tmp / MARKER_NAME).write_text(json.dumps({**identity, "jars": jars}, indent=1))
        if lib.exists():
            shutil.rmtree(lib)
        os.rename(tmp, lib)
        return lib
    finally:
        os.close(fd)


def find_java(why: str) -> str:
    """The java binary ($JAVA_HOME first); `why` ends the error message (e.g. "Kafka 4.x needs Java 17+")."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise JvmError(f"java not found: {why} (apt-get install -y openjdk-17-jre-headless or set JAVA_HOME)")
    return java


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_pdeathsig() -> None:
    """preexec_fn: SIGKILL the child if the (forking thread of the) parent dies, so tests leave no orphan JVMs."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def rss_kib(pid: int | None) -> int | None:
    """Resident set size of a process in KiB (None if it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pid_runs(pid: int, marker: bytes) -> bool:
    """True if process pid is alive and its command line contains marker (guards against a recycled pid)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def terminate_pid(pid: int, marker: bytes, timeout: float) -> bool:
    """SIGTERM pid (if it still runs marker), SIGKILL after timeout; True if it had to be killed."""
    if not pid_runs(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_runs(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pid_runs(pid, marker):
        return False
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while pid_runs(pid, marker) and time.monotonic() < end:
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- one JVM child process


class NotReady(Exception):
    """Raised by JvmService._ready: the service is not ready yet; the message says why (kept for the timeout error)."""


class JvmService:
    """The lifecycle of one JVM child process under workdir: start, ready wait, stop/kill, restart, its CLI.

    A subclass says only what differs: `_prepare` (jars, config files, the command line), `_ready` (the ready
    check), `_starting` (the log banner), `address`, and the class attributes below.
    """

    name: ClassVar[str] = "service"           # "broker": <name>.log, <name>.pid, <name>.json and the messages
    title: ClassVar[str] = "JVM service"      # "Kafka broker": startup errors
    script: ClassVar[str] = "service.py"      # the CLI's prog name and the log banner
    cmdline_mark: ClassVar[bytes] = b""       # in /proc/PID/cmdline: how a pid is recognised as this service
    error: ClassVar[type[JvmError]] = JvmError
    default_timeout: ClassVar[float] = 90.0   # start() and restart_same_data()
    first_wait_message: ClassVar[str] = "no attempt made"
    poll_interval: ClassVar[float] = 0.25     # between two ready checks
    owns_pid_file: ClassVar[bool] = False     # start() writes <name>.pid, stop()/kill() remove it (else the CLI)
    cli_start_help: ClassVar[str] = ""
    cli_port_help: ClassVar[str] = ""
    cli_fetch_help: ClassVar[str] = ""
    cli_status_fields: ClassVar[tuple[tuple[str, str], ...]] = ()  # `status` prints "label <name>.json[key]"...

    def __init__(self, workdir: Path, port: int = 0, *, jvm_opts: tuple[str, ...],
                 die_with_parent: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port                  # 0 until the first start picks one; restarts keep it
        self.jvm_opts = tuple(jvm_opts)
        self.die_with_parent = die_with_parent
        self.last_start_seconds: float | None = None  # start() to ready, for benchmarks
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ---- what a subclass says
    @property
    def address(self) -> str:
        """What the CLI prints once the service is ready (bootstrap address, URL)."""
        raise NotImplementedError

    def _prepare(self, deadline: float) -> list[str]:
        """Everything before the launch (jars, java, workdir, ports, config files); returns the command line."""
        raise NotImplementedError

    def _starting(self) -> tuple[str, str]:
        """(what starts, its ports) for the log banner."""
        raise NotImplementedError

    def _ready(self, remaining: float) -> bool:
        """One ready check: True if ready, False (or NotReady with the reason) if not yet."""
        raise NotImplementedError

    def _exit_reason(self) -> str:
        """Appended to the error when the process exits during startup."""
        return ""

    def _repr_extra(self) -> str:
        return ""

    # ---- paths and state
    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_kib(self) -> int | None:
        """Resident set size of the service's JVM in KiB (None if not running)."""
        return rss_kib(self.pid) if self.running else None

    def log_tail(self, lines: int = LOG_TAIL_LINES, since_last_start: bool = True) -> str:
        """The end of the log (since the last start unless since_last_start=False)."""
        return read_tail(self.log_path, self._log_offset if since_last_start else 0, lines)

    def log_since_start(self) -> str:
        """The whole log since the last start ("" if unreadable)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- lifecycle
    def _check_can_start(self) -> None:
        """Fail at once (before the ready timeout) when something the service needs is missing."""

    def start(self, timeout: float | None = None) -> None:
        """Prepare, launch the JVM, wait until it is ready (default_timeout); kills it if it does not get there."""
        if self.running:
            raise self.error(f"{self.name} already running (pid {self.pid})")
        self._check_can_start()
        t0 = time.monotonic()
        deadline = t0 + (self.default_timeout if timeout is None else timeout)
        cmd = self._prepare(deadline)
        what, ports = self._starting()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"=== {self.script}: starting {what} at {time.strftime('%F %T')} ({ports}) ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True, preexec_fn=set_pdeathsig if self.die_with_parent else None,
            )
        if self.owns_pid_file:
            self.pid_path.write_text(f"{self._proc.pid}\n")  # so `stop` can stop a start cut short
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        last = self.first_wait_message
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise self.error(f"{self.title} exited with code {code} during startup{self._exit_reason()}; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.error(f"{self.title} not ready before the timeout ({last}); "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if self._ready(remaining):
                    return
            except NotReady as exc:
                last = str(exc)
            time.sleep(min(self.poll_interval, max(deadline - time.monotonic(), 0)))

    def _ended(self) -> int | None:
        if self.owns_pid_file:
            self.pid_path.unlink(missing_ok=True)
        assert self._proc is not None
        return self._proc.returncode

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL after timeout; returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return self._ended()

    def kill(self) -> int | None:
        """SIGKILL at once (a crash: no clean shutdown, no flush)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        return self._ended()

    def restart_same_data(self, timeout: float | None = None) -> None:
        """Start again on the same ports and data (stops first if still running)."""
        if self.running:
            self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(workdir={str(self.workdir)!r}, port={self.port}{self._repr_extra()}, "
                f"pid={self.pid}, running={self.running})")

    # ---- CLI: start/stop/status/fetch of a daemonized service (die_with_parent=False), <name>.pid/.json
    @classmethod
    def from_cli(cls, workdir: Path, args: argparse.Namespace, state: Mapping[str, Any]) -> Self:
        """The service `start` runs, from its options and the state of the previous start."""
        raise NotImplementedError

    def cli_state(self) -> dict[str, object]:
        """What `start` saves in <name>.json once ready."""
        raise NotImplementedError

    def cli_notes(self) -> str | None:
        """A line `start` prints on stderr after the address, if any."""
        return None

    @classmethod
    def cli_fetch(cls) -> tuple[Path, str, str]:
        """Fill the caches; returns lib/, what it holds ("kafka 4.3.1") and anything to add after the jar count."""
        raise NotImplementedError

    @classmethod
    def add_start_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Options of `start` besides --workdir, --port and --timeout."""

    @classmethod
    def _running_pid(cls, workdir: Path) -> int:
        try:
            pid = int((workdir / f"{cls.name}.pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
        return pid if pid and pid_runs(pid, cls.cmdline_mark) else 0

    @classmethod
    def _read_state(cls, workdir: Path) -> dict[str, Any]:
        path = workdir / f"{cls.name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @classmethod
    def _cli_start(cls, args: argparse.Namespace) -> int:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        pid = cls._running_pid(workdir)
        if pid:
            print(f"{cls.name} already running in {workdir} (pid {pid})", file=sys.stderr)
            return 1
        service = cls.from_cli(workdir, args, cls._read_state(workdir))
        try:
            service.start(timeout=args.timeout)
        except JvmError as exc:
            print(f"{cls.name} start failed: {exc}", file=sys.stderr)
            return 1
        service.pid_path.write_text(f"{service.pid}\n")
        (workdir / f"{cls.name}.json").write_text(json.dumps(service.cli_state(), indent=1))
        print(service.address)
        notes = service.cli_notes()
        if notes:
            print(notes, file=sys.stderr)
        return 0

    @classmethod
    def _cli_stop(cls, args: argparse.Namespace) -> int:
        workdir = Path(args.workdir).resolve()
        pid_file = workdir / f"{cls.name}.pid"
        if not pid_file.exists():
            print(f"no {pid_file.name} in {workdir}: nothing to stop", file=sys.stderr)
            return 0
        pid = cls._running_pid(workdir)
        if not pid:
            print(f"{cls.name} (pid {pid_file.read_text().strip()}) was not running", file=sys.stderr)
        elif terminate_pid(pid, cls.cmdline_mark, args.timeout):
            print(f"{cls.name} pid {pid} still alive after {args.timeout:.0f}s: SIGKILL", file=sys.stderr)
        pid_file.unlink(missing_ok=True)
        return 0

    @classmethod
    def _cli_status(cls, args: argparse.Namespace) -> int:
        workdir = Path(args.workdir).resolve()
        pid = cls._running_pid(workdir)
        if pid:
            state = cls._read_state(workdir)
            shown = "".join(f" {label} {state.get(key)}" for label, key in cls.cli_status_fields)
            print(f"running pid {pid}{shown}")
            return 0
        print("not running")
        return 3

    @classmethod
    def _cli_fetch(cls, _args: argparse.Namespace) -> int:
        t0 = time.monotonic()
        try:
            lib, what, extra = cls.cli_fetch()
        except JvmError as exc:
            print(f"fetch failed: {exc}", file=sys.stderr)
            return 1
        print(lib)
        print(f"{what}: {len(list(lib.glob('*.jar')))} jars{extra}, {time.monotonic() - t0:.2f}s", file=sys.stderr)
        return 0

    @classmethod
    def cli_main(cls, argv: list[str] | None = None, description: str | None = None) -> int:
        """The service's command line: start (prints the address), stop, status (exit 0 running, 3 not), fetch."""
        parser = argparse.ArgumentParser(prog=cls.script, description=description)
        sub = parser.add_subparsers(dest="cmd", required=True)
        p = sub.add_parser("start", help=cls.cli_start_help)
        p.add_argument("--workdir", required=True)
        p.add_argument("--port", type=int, default=0, help=cls.cli_port_help)
        cls.add_start_arguments(p)
        p.add_argument("--timeout", type=float, default=cls.default_timeout)
        p.set_defaults(func=cls._cli_start)
        p = sub.add_parser("stop", help=f"stop the {cls.name} started in WORKDIR (SIGTERM, then SIGKILL)")
        p.add_argument("--workdir", required=True)
        p.add_argument("--timeout", type=float, default=20.0)
        p.set_defaults(func=cls._cli_stop)
        p = sub.add_parser("status", help=f"exit 0 if the {cls.name} of WORKDIR runs, 3 if not")
        p.add_argument("--workdir", required=True)
        p.set_defaults(func=cls._cli_status)
        p = sub.add_parser("fetch", help=cls.cli_fetch_help)
        p.set_defaults(func=cls._cli_fetch)
        args = parser.parse_args(argv)
        return int(args.func(args))
