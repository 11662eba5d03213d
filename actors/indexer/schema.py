"""The declared schema of every `hostaudit index` setting (pydantic models built from `actors/options.py`
types; the sections the indexer shares with the agent, such as TLS, SASL and supervision, are the agent's own
models). Defaults are in settings/indexer.yaml, loaded first: a key the file lacks is reported as required."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from actors.config.schema import HostPort, Http, KafkaSasl, KafkaSsl, Logging, SecretValue, Supervisor
from actors.options import (Choice, ConfigError, Duration, NonEmptyText, OptionalText, Schema, Size, Whole,
                            checked)

OFFSET_RESETS = ("earliest", "latest")


def _hosts(value: Any) -> list[Any]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _engine_url(value: Any) -> str:
    """`http(s)://host:port[/path]` or `host:port` (the scheme is decided later, by ssl.enabled)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ConfigError(f"{value!r} is not a URL such as http://localhost:9200")
    parts = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.username or parts.password:
        raise ConfigError("credentials in the URL are refused: give username and password, or api_key")
    if "://" in text and parts.scheme not in ("http", "https") or not parts.hostname or port == -1 \
            or parts.query or parts.fragment:
        raise ConfigError(f"{value!r} is not a URL such as http://localhost:9200")
    return text.rstrip("/")


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{value!r} is not a topic name")
    if len(value) > 249 or not all(char.isalnum() and char.isascii() or char in "._-" for char in value):
        raise ConfigError(f"{value!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    return value


EngineUrl = Annotated[str, checked(_engine_url)]
TopicName = Annotated[str, checked(_topic)]


class KafkaInput(Schema):
    """`input.kafka`: where the events are read from, and where refused ones go."""

    hosts: Annotated[tuple[HostPort, ...], checked(_hosts)]
    topics: Annotated[tuple[TopicName, ...], checked(_hosts)]
    group_id: NonEmptyText
    client_id: NonEmptyText
    auto_offset_reset: Choice(*OFFSET_RESETS)
    session_timeout: Duration()
    timeout: Duration()
    dead_letter_topic: TopicName
    ssl: KafkaSsl
    sasl: KafkaSasl
    username: OptionalText
    password: SecretValue


class Backoff(Schema):
    init: Duration()
    max: Duration()


class ElasticsearchOutput(Schema):
    """`output.elasticsearch`: the engine the documents are written to."""

    hosts: Annotated[tuple[EngineUrl, ...], checked(_hosts)]
    index: NonEmptyText
    username: OptionalText
    password: SecretValue
    api_key: SecretValue
    bulk_max_size: Whole(1, 100_000)
    bulk_max_bytes: Size
    timeout: Duration()
    backoff: Backoff
    ssl: KafkaSsl  # the same TLS keys as every Beats output


class Outputs(Schema):
    """`output.*`: the indexer's one output; the agent's output sections (a shared settings file) are ignored."""

    elasticsearch: ElasticsearchOutput
    console: Any = None
    file: Any = None
    kafka: Any = None


class Inputs(Schema):
    kafka: KafkaInput


class IndexerSection(Schema):
    workers: Whole(1, 64)
    drain_timeout: Duration()


class IndexerFramework(Schema):
    """Every top-level section the indexer owns; other top-level keys (the agent's `hostaudit`, `path`,
    `queue`...) are accepted and ignored, so one settings file can serve both."""

    model_config = {**Schema.model_config, "extra": "ignore"}
    input: Inputs
    output: Outputs
    indexer: IndexerSection
    supervisor: Supervisor
    http: Http
    logging: Logging
