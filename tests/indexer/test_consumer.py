"""The consumer's configuration and its group-membership watchdog (the group itself is tested with real Kafka
in test_failures.py)."""

from __future__ import annotations

import math
from pathlib import Path

from actors.indexer.consumer import consumer_config, membership_lost
from actors.indexer.settings import load_indexer_settings


def test_the_consumer_commits_by_hand_as_a_member_of_the_group() -> None:
    settings = load_indexer_settings(None, ["input.kafka.hosts=[k1:9092, k2:9092]", "input.kafka.group_id=g",
                                            "input.kafka.session_timeout=6s", "input.kafka.auto_offset_reset=latest"],
                                     environ={})
    config = consumer_config(settings.kafka, "hostaudit-indexer-2", 1600)
    assert config["bootstrap_servers"] == ["k1:9092", "k2:9092"] and config["group_id"] == "g"
    assert config["enable_auto_commit"] is False and config["auto_offset_reset"] == "latest"
    assert (config["session_timeout_ms"], config["heartbeat_interval_ms"]) == (6000, 2000)
    assert config["request_timeout_ms"] > config["session_timeout_ms"] and config["max_poll_records"] == 1600
    assert config["client_id"] == "hostaudit-indexer-2" and config["security_protocol"] == "PLAINTEXT"


def test_tls_and_sasl_are_set_up_as_for_the_kafka_output(tmp_path: Path) -> None:
    settings = load_indexer_settings(None, ["input.kafka.hosts=[k:9093]", "input.kafka.ssl.enabled=true",
                                            "input.kafka.ssl.verification_mode=none", "input.kafka.username=ix",
                                            "input.kafka.password=pw", "input.kafka.sasl.mechanism=SCRAM-SHA-512"],
                                     environ={})
    config = consumer_config(settings.kafka, "c", 10)
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "ix" and config["sasl_plain_password"] == "pw"
    assert config["ssl_context"].check_hostname is False


def test_a_consumer_that_stopped_heartbeating_has_lost_its_membership() -> None:
    session = 10.0  # limit: max(30 s, 3 session timeouts) = 30 s
    assert not membership_lost(connected_for=10, heartbeat_ago=math.inf, session_timeout=session), "still joining"
    assert membership_lost(connected_for=40, heartbeat_ago=math.inf, session_timeout=session), "never joined"
    assert not membership_lost(connected_for=400, heartbeat_ago=3.2, session_timeout=session)
    assert not membership_lost(connected_for=400, heartbeat_ago=12, session_timeout=session), "a rebalance's wait"
    assert membership_lost(connected_for=400, heartbeat_ago=31, session_timeout=session)
    assert not membership_lost(connected_for=400, heartbeat_ago=45, session_timeout=20.0), "limit 60 s"
    assert not membership_lost(connected_for=400, heartbeat_ago=None, session_timeout=session), "no figure"
