"""Shared plumbing of the JVM services ops/ runs for tests and benchmarks (Kafka, OpenSearch): Java, Maven jar caches, ports, child processes."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

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
