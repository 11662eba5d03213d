"""Runs a real single-node Apache Kafka broker (KRaft, 127.0.0.1) from Maven Central jars for tests and benchmarks."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import os
import secrets
import shutil
import socket
import ssl as _ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jvm import (  # noqa: E402
    JvmError, JvmService, NotReady, fetch_classpath, find_java, free_port, pom_property, tail,
)

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
SERVER_TEMPLATE = HERE / "server.properties"
LOG4J2_CONFIG = HERE / "log4j2.properties"
DEFAULT_JVM_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


# Every failure of the broker's tools is a JvmError (ops/jvm.py); BrokerError is the name its callers catch.
BrokerError = JvmError


# --------------------------------------------------------------------------- jar cache


def kafka_version() -> str:
    """The Kafka version pinned in ops/kafka/pom.xml (the single source of truth)."""
    return pom_property(POM, "kafka.version")


def cache_dir() -> Path:
    """${HOSTAUDIT_KAFKA_CACHE:-$HOME/.cache/hostaudit/kafka-<version>}."""
    env = os.environ.get("HOSTAUDIT_KAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "hostaudit" / f"kafka-{kafka_version()}"


def lib_dir() -> Path:
    return cache_dir() / "lib"


def fetch_jars(timeout: float = 900.0) -> Path:
    """Make sure the broker classpath is in the jar cache (runs Maven only if it is not); returns lib/."""
    version = kafka_version()
    return fetch_classpath(POM, lib_dir(), identity={"kafka_version": version}, lib_property="kafka.lib.dir",
                           needed=(f"kafka_2.13-{version}.jar", f"kafka-server-{version}.jar", "log4j-core-"),
                           what=f"Kafka {version}", timeout=timeout)


# --------------------------------------------------------------------------- TLS material


@dataclasses.dataclass(frozen=True)
class SslMaterial:
    """Test PKI: a CA, a broker certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""

    directory: Path
    ca_pem: Path            # clients: ssl_cafile
    ca_key: Path
    broker_cert_pem: Path
    broker_key_pem: Path
    keystore: Path          # PKCS12 (broker key + cert chain) for ssl.keystore.location
    keystore_password: str
    wrong_ca_pem: Path      # a CA that did NOT sign the broker cert: handshakes must fail with it

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


def _openssl(args: list[str], cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("openssl not found (apt-get install -y openssl)")
    try:
        proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"openssl {args[0]} timed out") from exc
    if proc.returncode != 0:
        raise BrokerError(f"openssl {' '.join(args)} failed (exit {proc.returncode}): {tail(proc.stderr)}")


def _make_ca(directory: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(["req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
              "-keyout", key.name, "-out", pem.name, "-subj", f"/CN={cn}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-addext", "subjectKeyIdentifier=hash"], directory)
    return key, pem


def make_ssl_material(directory: Path, password: str | None = None) -> SslMaterial:
    """Create (with openssl) a test CA, a broker cert for 127.0.0.1/localhost in a PKCS12 keystore, and a wrong CA."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(12)
    ca_key, ca_pem = _make_ca(directory, "ca", "hostaudit test CA")
    _wrong_key, wrong_pem = _make_ca(directory, "wrong-ca", "hostaudit unrelated CA")
    ext = directory / "broker.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
              "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost"], directory)
    _openssl(["x509", "-req", "-sha256", "-days", "3650", "-in", "broker.csr",
              "-CA", ca_pem.name, "-CAkey", ca_key.name, "-set_serial", f"0x{secrets.token_hex(16)}",
              "-extfile", ext.name, "-out", "broker.pem"], directory)
    _openssl(["pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", ca_pem.name,
              "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{password}"], directory)
    for secret in (ca_key, directory / "broker.key", directory / "broker.p12"):
        secret.chmod(0o600)
    return SslMaterial(directory=directory, ca_pem=ca_pem, ca_key=ca_key,
                       broker_cert_pem=directory / "broker.pem", broker_key_pem=directory / "broker.key",
                       keystore=directory / "broker.p12", keystore_password=password,
                       wrong_ca_pem=wrong_pem)


# --------------------------------------------------------------------------- broker


class KafkaBroker(JvmService):
    """One KRaft broker+controller child process on 127.0.0.1, with its config, data and log under workdir."""

    name = "broker"
    title = "Kafka broker"
    script = "broker.py"
    cmdline_mark = b"kafka.Kafka"
    default_timeout = 90.0
    first_wait_message = "no attempt made"
    poll_interval = 0.25
    owns_pid_file = False  # the CLI writes broker.pid once the broker is ready
    cli_start_help = "start a daemonized broker; prints its bootstrap address when ready"
    cli_port_help = "plaintext port (default: previous one, else a free one)"
    cli_fetch_help = "populate the jar cache (Maven) and print its lib/ path"
    cli_status_fields = (("bootstrap", "bootstrap"), ("ssl", "ssl_bootstrap"))

    def __init__(self, workdir: Path, port: int = 0, ssl_port: int | None = None,
                 ssl: SslMaterial | None = None, *, node_id: int = 1,
                 jvm_opts: tuple[str, ...] = DEFAULT_JVM_OPTS,
                 extra_properties: Mapping[str, str] | None = None,
                 die_with_parent: bool = True,
                 sasl_users: Mapping[str, str] | None = None) -> None:
        if ssl_port and ssl is None:
            raise ValueError("ssl_port given without ssl material (see make_ssl_material)")
        super().__init__(workdir, port, jvm_opts=jvm_opts, die_with_parent=die_with_parent)
        self.ssl = ssl
        self.ssl_port = (ssl_port or 0) if ssl is not None else None
        self.controller_port = 0
        self.node_id = node_id
        self.extra_properties = dict(extra_properties or {})
        self.sasl_users = dict(sasl_users or {})  # SASL/PLAIN users of a SASL_PLAINTEXT listener, if any
        self.sasl_port = 0

    # ---- paths and addresses
    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise BrokerError("broker has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    address = bootstrap

    @property
    def sasl_bootstrap(self) -> str:
        if not self.sasl_users or not self.sasl_port:
            raise BrokerError("broker has no SASL listener (pass sasl_users=... and call start())")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        if self.ssl is None:
            raise BrokerError("broker has no SSL listener (pass ssl=make_ssl_material(...))")
        if not self.ssl_port:
            raise BrokerError("broker has no SSL port yet: call start() first")
        return f"127.0.0.1:{self.ssl_port}"

    # ---- lifecycle
    def _render_config(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.ssl is not None:
            listeners.append(f"SSL://127.0.0.1:{self.ssl_port}")
            protocols.append("SSL:SSL")
        if self.sasl_users:
            listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}")
            protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
        advertised = ",".join(listeners)
        listeners.append(f"CONTROLLER://127.0.0.1:{self.controller_port}")
        text = SERVER_TEMPLATE.read_text()
        for key, value in {
            "@NODE_ID@": str(self.node_id),
            "@CONTROLLER_PORT@": str(self.controller_port),
            "@LISTENERS@": ",".join(listeners),
            "@ADVERTISED_LISTENERS@": advertised,
            "@SECURITY_PROTOCOL_MAP@": ",".join(protocols),
            "@DATA_DIR@": str(self.data_dir),
        }.items():
            text = text.replace(key, value)
        extra: dict[str, str] = {}
        if self.ssl is not None:
            extra.update({
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": str(self.ssl.keystore),
                "ssl.keystore.password": self.ssl.keystore_password,
                "ssl.key.password": self.ssl.keystore_password,
                "ssl.client.auth": "none",
                "ssl.endpoint.identification.algorithm": "https",
            })
        if self.sasl_users:
            users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users.items())
            extra.update({
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
            })
        extra.update(self.extra_properties)
        if extra:
            text += "\n# --- added by broker.py ---\n" + "".join(f"{k}={v}\n" for k, v in extra.items())
        return text

    def _java_cmd(self, java: str, lib: Path, *args: str, heap: tuple[str, ...] | None = None) -> list[str]:
        return [java, *(heap if heap is not None else self.jvm_opts),
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                f"-Dkafka.logs.dir={self.workdir / 'logs'}",
                "-cp", str(lib / "*"), *args]

    def _format(self, java: str, lib: Path, timeout: float) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the formatter would read a leading "-" as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = self._java_cmd(java, lib, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                             "-c", str(self.config_path), "--ignore-formatted",
                             heap=("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 5.0),
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"kafka StorageTool format timed out after {timeout:.0f}s") from exc
        if proc.returncode != 0 or not (self.data_dir / "meta.properties").is_file():
            raise BrokerError(f"kafka StorageTool format failed (exit {proc.returncode}): "
                              f"{tail(proc.stdout + proc.stderr)}")

    def _check_can_start(self) -> None:
        if importlib.util.find_spec("kafka") is None:  # fail now, not after the timeout of the readiness check
            raise BrokerError(f"kafka-python is needed for the readiness check and {sys.executable} lacks it: "
                              "run with the repo's .venv/bin/python (ops/kafka/start.sh creates .venv)")

    def _prepare(self, deadline: float) -> list[str]:
        """Fetch jars if needed, pick ports, write server.properties, format storage (first start only)."""
        lib = fetch_jars()
        java = find_java("Kafka 4.x needs Java 17+")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        if self.ssl is not None:
            self.ssl_port = self.ssl_port or free_port()
        if self.sasl_users:
            self.sasl_port = self.sasl_port or free_port()
        self.config_path.write_text(self._render_config())
        if not (self.data_dir / "meta.properties").is_file():
            self._format(java, lib, deadline - time.monotonic())
        return self._java_cmd(java, lib, "kafka.Kafka", str(self.config_path))

    def _starting(self) -> tuple[str, str]:
        return (f"Kafka {kafka_version()}",
                f"port {self.port}, ssl_port {self.ssl_port}, controller {self.controller_port}")

    def _ready(self, remaining: float) -> bool:
        try:
            self._probe(min(remaining, 5.0))
        except Exception as exc:  # noqa: BLE001 -- any probe failure means "not ready yet"; kept for the message
            raise NotReady(f"last probe: {type(exc).__name__}: {exc}") from exc
        return True

    def _probe(self, timeout: float) -> None:
        """Ready = the plaintext port answers a kafka-python metadata request listing this node (+ TLS handshake)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout):
            pass
        try:
            from kafka import KafkaAdminClient
        except ImportError as exc:
            raise BrokerError("kafka-python is needed for the readiness check: run with the repo's "
                              ".venv/bin/python") from exc
        ms = max(int(timeout * 1000), 500)
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="broker.py-probe",
                                 request_timeout_ms=ms, bootstrap_timeout_ms=ms,
                                 reconnect_backoff_ms=100, reconnect_backoff_max_ms=500)
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
        live = {b.get("broker_id", b.get("node_id")) for b in cluster.get("brokers", []) if not b.get("is_fenced")}
        if self.node_id not in live:
            raise BrokerError(f"metadata lists unfenced brokers {sorted(map(str, live))}, not node {self.node_id}")
        if self.ssl is not None:
            ctx = _ssl.create_default_context(cafile=str(self.ssl.ca_pem))
            with socket.create_connection(("127.0.0.1", self.ssl_port), timeout=timeout) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass

    def _repr_extra(self) -> str:
        return f", ssl_port={self.ssl_port}"

    # ---- CLI (broker.pid, broker.json)
    @classmethod
    def add_start_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ssl", action="store_true", help="also listen with TLS (test CA made in WORKDIR/ssl)")
        parser.add_argument("--ssl-port", type=int, default=0, help="TLS port (implies --ssl)")

    @classmethod
    def from_cli(cls, workdir: Path, args: argparse.Namespace, state: Mapping[str, Any]) -> KafkaBroker:
        ssl_mat: SslMaterial | None = None
        if args.ssl or args.ssl_port or state.get("ssl"):  # a restart keeps the TLS listener it had
            saved = state.get("ssl")
            if isinstance(saved, dict):
                ssl_mat = SslMaterial(**{k: (v if k == "keystore_password" else Path(v)) for k, v in saved.items()})
            else:
                ssl_mat = make_ssl_material(workdir / "ssl")
        broker = cls(workdir, port=args.port or int(state.get("port", 0) or 0),
                     ssl_port=(args.ssl_port or int(state.get("ssl_port", 0) or 0)) if ssl_mat else None,
                     ssl=ssl_mat, die_with_parent=False)
        broker.controller_port = int(state.get("controller_port", 0) or 0)
        return broker

    def cli_state(self) -> dict[str, object]:
        return {"pid": self.pid, "port": self.port, "controller_port": self.controller_port,
                "ssl_port": self.ssl_port, "bootstrap": self.bootstrap,
                "ssl_bootstrap": self.ssl_bootstrap if self.ssl else None,
                "ssl": self.ssl.to_json() if self.ssl else None,
                "log": str(self.log_path), "kafka_version": kafka_version(),
                "ready_seconds": round(self.last_start_seconds or 0, 2)}

    def cli_notes(self) -> str | None:
        return f"ssl: {self.ssl_bootstrap} (ssl_cafile={self.ssl.ca_pem})" if self.ssl else None

    @classmethod
    def cli_fetch(cls) -> tuple[Path, str, str]:
        return fetch_jars(), f"kafka {kafka_version()}", ""


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    return KafkaBroker.cli_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
