"""Loading `hostaudit index` settings: settings/indexer.yaml, `-c`, the secrets file, HOSTAUDIT_* and -E merged
by the agent's dynaconf layers, checked by the indexer's schema and the rules that span keys -> `IndexerSettings`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from actors.config.layers import Layers
from actors.config.load import SupervisorSettings, format_string_fields
from actors.config.secrets import Secret, freeze, plain, protect_secrets
from actors.indexer.schema import IndexerFramework
from actors.options import fail, show, validate

DEFAULTS_FILE = Path(__file__).resolve().parent.parent.parent / "settings" / "indexer.yaml"
# Characters Elasticsearch refuses in an index or data stream name (besides upper case).
INDEX_NAME_FORBIDDEN = set(' \\/*?"<>|,#:')


@dataclass(frozen=True)
class KafkaSettings:
    """`input.kafka`. `client` holds the connection keys in the shape the Kafka output's `producer_config`
    takes (hosts, client_id, timeout, ssl, sasl, username, password), so TLS and SASL are set up once."""

    client: Mapping[str, Any]
    topics: tuple[str, ...]
    group_id: str
    auto_offset_reset: str
    session_timeout: float  # seconds
    dead_letter_topic: str


@dataclass(frozen=True)
class EngineSettings:
    """`output.elasticsearch`, with each host a full URL and the TLS keys as the Kafka output takes them."""

    hosts: tuple[str, ...]
    index: str
    username: str | None
    password: Secret | None
    api_key: Secret | None
    bulk_max_size: int
    bulk_max_bytes: int
    timeout: float
    backoff_init: float
    backoff_max: float
    ssl: Mapping[str, Any]  # enabled, certificate_authorities, certificate, key, key_passphrase, verification_mode


@dataclass(frozen=True)
class IndexerSettings:
    """The validated, effective configuration of `hostaudit index`."""

    kafka: KafkaSettings
    engine: EngineSettings
    workers: int
    drain_timeout: float
    supervisor: SupervisorSettings
    http_enabled: bool
    http_host: str
    http_port: int
    logging_level: str
    tree: Mapping[str, Any]  # the effective configuration, nested (secrets as Secret), for export


def _check_tls(where: str, ssl: Any, enabled: bool) -> dict[str, Any]:
    if (ssl.certificate is None) != (ssl.key is None):
        fail(f"{where}.ssl.{'key' if ssl.key is None else 'certificate'}",
             "required with ssl.certificate and ssl.key: give both or neither")
    if enabled:
        files = [(f"{where}.ssl.certificate_authorities[{index}]", path)
                 for index, path in enumerate(ssl.certificate_authorities)]
        files += [(f"{where}.ssl.{name}", path) for name, path in (("certificate", ssl.certificate),
                                                                   ("key", ssl.key)) if path is not None]
        for key, path in files:
            if not Path(path).expanduser().is_file():
                fail(key, f"{path} is not an existing file")
    return {"enabled": enabled, "certificate_authorities": list(ssl.certificate_authorities),
            "certificate": ssl.certificate, "key": ssl.key, "key_passphrase": ssl.key_passphrase,
            "verification_mode": ssl.verification_mode}


def _check_credentials(where: str, username: str | None, password: Any) -> None:
    if username is not None and password is None:
        fail(f"{where}.password", f"required when {where}.username is set")
    if password is not None and username is None:
        fail(f"{where}.username", f"required when {where}.password is set")


def check_index_name(template: str) -> None:
    """Refuse an `output.elasticsearch.index` whose own text could never name an index (upper case, spaces,
    `/`...); the values an event puts in it are checked by the engine (a refusal sends the event to the
    dead-letter topic)."""
    from actors.outputs.kafka import FormatString

    document: dict[str, Any] = {}
    for field in format_string_fields(template):
        place = document
        *parents, leaf = field.split(".")
        for part in parents:
            place = place.setdefault(part, {})
        place[leaf] = "x"
    name = FormatString(template).render(document)
    where = "output.elasticsearch.index"
    if name != name.lower():
        fail(where, f"{template!r}: index names must be lower case")
    bad = sorted(set(name) & INDEX_NAME_FORBIDDEN)
    if bad:
        fail(where, f"{template!r}: index names cannot contain {' '.join(repr(char) for char in bad)}")
    if name[:1] in ("-", "_", "+") or name in (".", ".."):
        fail(where, f"{template!r}: index names cannot start with '-', '_' or '+'")


def _kafka_settings(framework: IndexerFramework, layers: Layers) -> KafkaSettings:
    kafka = framework.input.kafka
    where = "input.kafka"
    if not kafka.hosts:
        fail(f"{where}.hosts", 'required, e.g. ["localhost:9092"]')
    if not kafka.topics:
        fail(f"{where}.topics", "lists no topic")
    if kafka.dead_letter_topic in kafka.topics:
        fail(f"{where}.dead_letter_topic", f"{kafka.dead_letter_topic!r} is also in input.kafka.topics: "
             "refused documents would be read again")
    _check_credentials(where, kafka.username, kafka.password)
    ssl_enabled = layers.configured(("input", "kafka", "ssl")) if kafka.ssl.enabled is None else kafka.ssl.enabled
    client = {
        "hosts": list(kafka.hosts), "client_id": kafka.client_id, "timeout": kafka.timeout,
        "ssl": _check_tls(where, kafka.ssl, ssl_enabled),
        "sasl": {"mechanism": kafka.sasl.mechanism or ("PLAIN" if kafka.username is not None else None)},
        "username": kafka.username, "password": kafka.password,
        "compression": "none", "partition": {"hash": {}}, "max_message_bytes": 1_000_000,
    }
    return KafkaSettings(freeze(client), tuple(kafka.topics), kafka.group_id, kafka.auto_offset_reset,
                         kafka.session_timeout, kafka.dead_letter_topic)


def _engine_settings(framework: IndexerFramework, layers: Layers) -> EngineSettings:
    engine = framework.output.elasticsearch
    where = "output.elasticsearch"
    if not engine.hosts:
        fail(f"{where}.hosts", 'required, e.g. ["http://localhost:9200"]')
    _check_credentials(where, engine.username, engine.password)
    if engine.api_key is not None and engine.username is not None:
        fail(f"{where}.api_key", "give either api_key or username and password, not both")
    if engine.backoff.max < engine.backoff.init:
        fail(f"{where}.backoff.max", f"must not be less than {where}.backoff.init")
    check_index_name(engine.index)
    https = any(host.startswith("https://") for host in engine.hosts)
    ssl_enabled = (layers.configured(("output", "elasticsearch", "ssl")) or https) if engine.ssl.enabled is None \
        else engine.ssl.enabled
    if not ssl_enabled and https:
        fail(f"{where}.ssl.enabled", "false, but a host is https://")
    tls = _check_tls(where, engine.ssl, ssl_enabled)
    scheme = "https" if ssl_enabled else "http"
    hosts = []
    for index, host in enumerate(engine.hosts):
        if host.startswith("http://") and ssl_enabled:
            fail(f"{where}.hosts[{index}]", f"{host!r} is http:// but ssl is enabled")
        hosts.append(host if "://" in host else f"{scheme}://{host}")
    return EngineSettings(tuple(hosts), engine.index, engine.username, engine.password, engine.api_key,
                          engine.bulk_max_size, engine.bulk_max_bytes, engine.timeout, engine.backoff.init,
                          engine.backoff.max, freeze(tls))


def load_indexer_settings(config_file: str | Path | None = None, overrides: Sequence[str] = (),
                          environ: Mapping[str, str] | None = None) -> IndexerSettings:
    """Load settings/indexer.yaml, the -c file, the secrets file, HOSTAUDIT_* variables and -E overrides; check
    them. Raises ConfigError (one line naming the setting or file) for anything the user can fix."""
    layers = Layers(DEFAULTS_FILE, config_file, overrides, os.environ if environ is None else environ)
    tree = protect_secrets(layers.tree)
    for name in IndexerFramework.model_fields:
        if tree.get(name) is not None and not isinstance(tree[name], Mapping):
            fail(name, f"must be a map of settings, not {show(name, tree[name])}")
    framework = validate(IndexerFramework, tree)
    supervisor = framework.supervisor
    if supervisor.backoff.max < supervisor.backoff.initial:
        fail("supervisor.backoff.max", "must not be less than supervisor.backoff.initial")
    kafka = _kafka_settings(framework, layers)
    engine = _engine_settings(framework, layers)
    owned = {name: tree[name] for name in IndexerFramework.model_fields if name in tree}
    owned["output"] = {"elasticsearch": tree["output"]["elasticsearch"]}
    return IndexerSettings(
        kafka=kafka, engine=engine, workers=framework.indexer.workers,
        drain_timeout=framework.indexer.drain_timeout,
        supervisor=SupervisorSettings(supervisor.hang_timeout, supervisor.max_restarts,
                                      supervisor.max_restarts_window, supervisor.backoff.initial,
                                      supervisor.backoff.max, supervisor.failed_retry),
        http_enabled=framework.http.enabled, http_host=framework.http.host, http_port=framework.http.port,
        logging_level=framework.logging.level, tree=freeze(owned))


def export_indexer_yaml(settings: IndexerSettings) -> str:
    """The indexer's effective configuration as YAML, every secret shown as `[redacted]`."""
    return yaml.safe_dump(plain(settings.tree), sort_keys=False, default_flow_style=False, allow_unicode=True)
