"""`hostaudit index` settings: the defaults of settings/indexer.yaml, the layers over them, every refusal as one
line naming the key, secrets that never show; and the command line's `test index-config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from actors.config.secrets import Secret
from actors.indexer.settings import IndexerSettings, export_indexer_yaml, load_indexer_settings
from actors.options import ConfigError
from tests.agent_harness import REPO

KAFKA = "input.kafka.hosts=[localhost:9092]"
PASSWORD = "s3cr3t-Pa55w0rd"


def load(overrides: Sequence[str] = (KAFKA,), text: str | None = None, tmp_path: Path | None = None,
         environ: Mapping[str, str] | None = None) -> IndexerSettings:
    path = None
    if text is not None:
        assert tmp_path is not None
        path = tmp_path / "indexer.yml"
        path.write_text(text)
    return load_indexer_settings(path, overrides, environ={} if environ is None else environ)


def error(overrides: Sequence[str], **kwargs) -> str:
    with pytest.raises(ConfigError) as raised:
        load(overrides, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    settings = load()
    assert settings.kafka.topics == ("hostaudit",) and settings.kafka.group_id == "hostaudit-indexer"
    assert settings.kafka.dead_letter_topic == "hostaudit-dead-letter" and settings.kafka.session_timeout == 10.0
    assert settings.kafka.auto_offset_reset == "earliest"
    engine = settings.engine
    assert engine.hosts == ("http://localhost:9200",) and engine.index == "hostaudit-%{[event.dataset]}-default"
    assert (engine.bulk_max_size, engine.bulk_max_bytes, engine.timeout) == (1600, 10 * 1024 * 1024, 90.0)
    assert (engine.backoff_init, engine.backoff_max) == (1.0, 60.0)
    assert engine.username is engine.password is engine.api_key is None and not engine.ssl["enabled"]
    assert settings.workers == 1 and settings.drain_timeout == 10.0
    assert (settings.supervisor.max_restarts, settings.supervisor.backoff_initial) == (5, 1.0)
    assert (settings.http_enabled, settings.http_port, settings.logging_level) == (False, 5067, "info")


def test_layers_file_environment_and_overrides(tmp_path: Path) -> None:
    text = ("input.kafka:\n  hosts: [k1:9092, k2:9092]\n  topics: [hostaudit-host, hostaudit-process]\n"
            "output.elasticsearch:\n  hosts: [es1:9200]\n  bulk_max_size: 500\n  bulk_max_bytes: 5MB\n"
            "indexer.workers: 2\n")
    settings = load(["indexer.workers=3"], text, tmp_path,
                    environ={"HOSTAUDIT_OUTPUT__ELASTICSEARCH__BULK_MAX_SIZE": "700"})
    assert settings.kafka.client["hosts"] == ("k1:9092", "k2:9092")
    assert settings.kafka.topics == ("hostaudit-host", "hostaudit-process")
    assert settings.engine.hosts == ("http://es1:9200",), "a host:port gets the scheme ssl decides"
    assert (settings.engine.bulk_max_size, settings.engine.bulk_max_bytes) == (700, 5_000_000)
    assert settings.workers == 3, "-E wins over the file"


def test_an_agent_settings_file_serves_too(tmp_path: Path) -> None:
    text = ("hostaudit.modules:\n- module: system\n  datasets: [host]\npath.data: /var/lib/hostaudit\n"
            "output.kafka:\n  hosts: ['k:9092']\n  topic: hostaudit\ninput.kafka.hosts: ['k:9092']\n")
    assert load([], text, tmp_path).kafka.client["hosts"] == ("k:9092",)


@pytest.mark.parametrize(("override", "message"), [
    ("output.elasticsearch.bulk_max_sise=3", "output.elasticsearch.bulk_max_sise: unknown setting (did you mean "
                                             "bulk_max_size?)"),
    ("output.elasticsearch.bulk_max_size=0", "output.elasticsearch.bulk_max_size: 0 is out of range"),
    ("output.elasticsearch.bulk_max_bytes=lots", "output.elasticsearch.bulk_max_bytes: 'lots' is not a size"),
    ("output.elasticsearch.hosts=[ftp://x:21]", "output.elasticsearch.hosts[0]: 'ftp://x:21' is not a URL"),
    ("output.elasticsearch.hosts=[]", "output.elasticsearch.hosts: required"),
    ("output.elasticsearch.index=Hostaudit-%{[event.dataset]}",
     "output.elasticsearch.index: 'Hostaudit-%{[event.dataset]}': index names must be lower case"),
    ("output.elasticsearch.index=a b", "index names cannot contain ' '"),
    ("output.elasticsearch.index=_x", "index names cannot start with"),
    ("output.elasticsearch.username=elastic", "output.elasticsearch.password: required when "
                                              "output.elasticsearch.username is set"),
    ("output.elasticsearch.backoff.init=2m", "output.elasticsearch.backoff.max: must not be less than"),
    ("output.elasticsearch.timeout=soon", "output.elasticsearch.timeout: 'soon' is not a duration"),
    ("output.elasticsearch.ssl.certificate=/x.pem", "output.elasticsearch.ssl.key: required with ssl.certificate"),
    ("input.kafka.topics=[]", "input.kafka.topics: lists no topic"),
    ("input.kafka.topics=[a b]", "input.kafka.topics[0]: 'a b' is not a valid Kafka topic name"),
    ("input.kafka.topics=[hostaudit-dead-letter]", "input.kafka.dead_letter_topic: 'hostaudit-dead-letter' is also "
                                                   "in input.kafka.topics"),
    ("input.kafka.auto_offset_reset=middle", "input.kafka.auto_offset_reset: 'middle' is not one of earliest, "
                                             "latest"),
    ("input.kafka.sasl.mechanism=GSSAPI", "input.kafka.sasl.mechanism: 'GSSAPI' is not one of PLAIN"),
    ("indexer.workers=0", "indexer.workers: 0 is out of range (must be between 1 and 64)"),
    ("supervisor.backoff.initial=2m", "supervisor.backoff.max: must not be less than supervisor.backoff.initial"),
    ("input=3", "input: must be a map of settings, not 3"),
])
def test_each_refusal_is_one_line_naming_the_key(override: str, message: str) -> None:
    assert message in error([KAFKA, override])


def test_kafka_hosts_are_required() -> None:
    assert error([]) == 'input.kafka.hosts: required, e.g. ["localhost:9092"]'


def test_tls_decides_the_scheme_and_refuses_a_contradiction(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection")
    settings = load([KAFKA, "output.elasticsearch.hosts=[es:9200]",
                     f"output.elasticsearch.ssl.certificate_authorities=[{ca}]"])
    assert settings.engine.hosts == ("https://es:9200",) and settings.engine.ssl["enabled"]
    assert load([KAFKA, "output.elasticsearch.hosts=[https://es:9200]"]).engine.ssl["enabled"]
    assert "is http:// but ssl is enabled" in error([KAFKA, "output.elasticsearch.hosts=[http://es:9200]",
                                                     "output.elasticsearch.ssl.enabled=true"])
    assert "false, but a host is https://" in error([KAFKA, "output.elasticsearch.hosts=[https://es:9200]",
                                                     "output.elasticsearch.ssl.enabled=false"])
    assert f"{tmp_path}/missing.pem is not an existing file" in error(
        [KAFKA, f"output.elasticsearch.ssl.certificate_authorities=[{tmp_path}/missing.pem]"])


def test_secrets_never_show(tmp_path: Path) -> None:
    settings = load([KAFKA, f"output.elasticsearch.api_key=id:{PASSWORD}"])
    assert isinstance(settings.engine.api_key, Secret) and settings.engine.api_key.reveal() == f"id:{PASSWORD}"
    assert PASSWORD not in repr(settings) and PASSWORD not in export_indexer_yaml(settings)
    assert "api_key: '[redacted]'" in export_indexer_yaml(settings)
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(f"output.elasticsearch.password: {PASSWORD}\ninput.kafka.password: {PASSWORD}\n")
    settings = load([KAFKA, "output.elasticsearch.username=elastic", "input.kafka.username=indexer"],
                    environ={"HOSTAUDIT_SECRETS_FILE": str(secrets)})
    assert settings.engine.password.reveal() == PASSWORD and settings.kafka.client["password"].reveal() == PASSWORD
    assert settings.kafka.client["sasl"]["mechanism"] == "PLAIN"
    assert PASSWORD not in repr(settings) and PASSWORD not in export_indexer_yaml(settings)
    for override in (f"output.elasticsearch.api_key={PASSWORD}", f"output.elasticsearch.password={PASSWORD}"):
        message = error([KAFKA, override, "output.elasticsearch.username=elastic",
                         "output.elasticsearch.bulk_max_size=-1"] if "api_key" in override else [KAFKA, override])
        assert PASSWORD not in message
    assert "give either api_key or username and password" in error(
        [KAFKA, f"output.elasticsearch.api_key={PASSWORD}", "output.elasticsearch.username=elastic",
         f"output.elasticsearch.password={PASSWORD}"])
    assert PASSWORD not in error([KAFKA, f"output.elasticsearch.hosts=[http://elastic:{PASSWORD}@es:9200]"])


def test_settings_cross_to_worker_processes_intact() -> None:
    import pickle

    settings = load([KAFKA, f"output.elasticsearch.api_key={PASSWORD}"])
    assert pickle.loads(pickle.dumps(settings)) == settings


def hostaudit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_test_index_config_says_ok_or_one_line_and_exit_1() -> None:
    result = hostaudit("test", "index-config", "-E", KAFKA)
    assert (result.returncode, result.stdout, result.stderr) == (0, "Config OK\n", "")
    result = hostaudit("test", "index-config", "-E", KAFKA, "-E", f"output.elasticsearch.password={PASSWORD}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("hostaudit: configuration error: output.elasticsearch.username: required when "
                             "output.elasticsearch.password is set\n")
    result = hostaudit("index", "-E", "indexer.workers=none")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "indexer.workers" in result.stderr
