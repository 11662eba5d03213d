"""The Kafka client settings hostaudit derives from output.kafka: idempotent, acks=all, TLS and SASL as asked."""

from __future__ import annotations

from pathlib import Path

from actors.config import load_settings
from actors.datasets import CATALOG
from actors.outputs.kafka import HashPartitioner, RoundRobinPartitioner, producer_config


def kafka_options(tmp_path: Path, *overrides: str) -> dict:
    settings = load_settings(None, [f"path.data={tmp_path}", "output.kafka.hosts=[127.0.0.1:9092]", *overrides],
                             environ={}, catalog=CATALOG)
    return producer_config(settings.output.options)


def test_the_client_is_explicitly_idempotent_with_acks_all_and_lz4(tmp_path: Path) -> None:
    config = kafka_options(tmp_path)
    assert config["enable_idempotence"] is True, "explicit, so kafka-python raises on a conflict instead of " \
                                                 "silently turning idempotence off"
    assert config["acks"] == "all" and config["compression_type"] == "lz4"
    assert config["security_protocol"] == "PLAINTEXT"
    assert isinstance(config["partitioner"], HashPartitioner)


def test_sasl_password_reaches_the_client_revealed(tmp_path: Path) -> None:
    config = kafka_options(tmp_path, "output.kafka.username=agent", "output.kafka.password=s3cret",
                           "output.kafka.sasl.mechanism=SCRAM-SHA-512", "output.kafka.partition.round_robin={}")
    assert config["security_protocol"] == "SASL_PLAINTEXT"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_password"] == "s3cret", "the Secret wrapper is unwrapped only for the client"
    assert isinstance(config["partitioner"], RoundRobinPartitioner)


def test_round_robin_moves_on_after_group_events() -> None:
    partitioner = RoundRobinPartitioner(group_events=2)
    chosen = [partitioner(None, [0, 1, 2], [0, 1, 2]) for _ in range(6)]
    assert chosen == [0, 0, 1, 1, 2, 2]
