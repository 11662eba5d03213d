"""At-least-once delivery to a real Apache Kafka broker: topics, keys, outages, kill -9, torn spools, spools of the
previous version, TLS."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from actors.event import encode_document
from actors.runtime.spool import segment_name
from tests.agent_harness import REPO, wait_for
from tests.hostfs import make_hostfs, set_hostname
from tests.kafka_support import consume_by_partition, make_ssl_material, wait_for_topic_events
from tests.unit.test_spool import encode_v1

pytestmark = pytest.mark.kafka

FAST_HOST = "hostaudit.modules=[{module: system, datasets: [host], period: 200ms}]"


def kafka_overrides(bootstrap: str, topic: str, *extra: str) -> tuple[str, ...]:
    return ("output.file.enabled=false", "output.kafka.enabled=true", f"output.kafka.hosts=[{bootstrap}]",
            f"output.kafka.topic={topic}", "output.kafka.timeout=5s", "output.kafka.backoff.init=200ms",
            "output.kafka.backoff.max=2s", *extra)


def host_sequences(messages) -> set[int]:
    return {doc["event"]["sequence"] for _, doc in messages if doc["event"]["dataset"] == "host"}


def test_events_arrive_on_the_formatted_topic_keyed_by_host_id(agent_factory, kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    agent = agent_factory(overrides=kafka_overrides(kafka_bootstrap, prefix + "-%{[event.dataset]}"))
    messages = wait_for_topic_events(kafka_bootstrap, f"{prefix}-host", lambda m: len(m) >= 1, 30,
                                     "a host event in Kafka")
    key, document = messages[0]
    assert document["event"]["dataset"] == "host" and document["event"]["action"] == "host"
    assert key == document["host"]["id"].encode(), "keyed by host.id, so a host's events stay in order"
    assert agent.process.poll() is None


def test_broker_down_for_30_seconds_loses_nothing(agent_factory, own_broker, tmp_path: Path) -> None:
    own_broker.start()
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="n0")
    agent = agent_factory(overrides=kafka_overrides(own_broker.bootstrap, topic, f"hostfs={hostfs}", FAST_HOST))
    wait_for_topic_events(own_broker.bootstrap, topic, lambda m: len(m) >= 1, 30, "the first event")
    own_broker.stop()
    down_until = time.monotonic() + 30
    changes = 0
    while time.monotonic() < down_until:  # keep producing changes while the broker is away
        changes += 1
        set_hostname(hostfs, f"n{changes}")
        time.sleep(0.5)
    agent.wait_for_log("output unavailable", 5)
    produced_while_down = agent.committed_sequence()
    assert produced_while_down > 20, "the collector kept running and spooling while the broker was down"
    own_broker.restart_same_data()
    set_hostname(hostfs, "final")
    final = wait_for(lambda: agent.committed_sequence() > produced_while_down and agent.committed_sequence(),
                     10, "a change after the broker came back")
    messages = wait_for_topic_events(own_broker.bootstrap, topic,
                                     lambda m: set(range(1, final + 1)) <= host_sequences(m), 90,
                                     "every event produced during the outage")
    assert set(range(1, final + 1)) <= host_sequences(messages)
    assert agent.process.poll() is None


def test_kill_9_of_the_whole_agent_repeatedly_loses_nothing(agent_factory, kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="k0")
    overrides = kafka_overrides(kafka_bootstrap, topic, f"hostfs={hostfs}", FAST_HOST)
    changes = 0
    for round_number in range(4):
        agent = agent_factory(overrides=overrides)
        agent.wait_for_role("host", 15)
        deadline = time.monotonic() + 2 + round_number * 0.5
        while time.monotonic() < deadline:
            changes += 1
            set_hostname(hostfs, f"k{changes}")
            time.sleep(0.1)
        os.killpg(agent.pid, signal.SIGKILL)  # the whole agent: supervisor, forkserver, collectors, producer
        agent.process.wait(10)
    spooled = agent.committed_sequence()
    assert spooled > 10
    agent = agent_factory(overrides=overrides)
    messages = wait_for_topic_events(kafka_bootstrap, topic,
                                     lambda m: set(range(1, spooled + 1)) <= host_sequences(m), 60,
                                     "every event that reached the spool before the kills")
    assert set(range(1, spooled + 1)) <= host_sequences(messages)


def test_torn_spool_tail_is_recovered_on_start(agent_factory, kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"torn-{uuid.uuid4().hex[:8]}"
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="t0")
    # The broker is unreachable at first, so events stay in the spool.
    overrides = kafka_overrides("127.0.0.1:1", topic, f"hostfs={hostfs}", FAST_HOST)
    agent = agent_factory(overrides=overrides)
    wait_for(lambda: agent.committed_sequence() >= 1, 10, "the first host state spooled")
    for index in range(1, 6):
        set_hostname(hostfs, f"t{index}")
        wait_for(lambda: agent.committed_sequence() >= index + 1, 10, f"change {index} spooled")
    agent.terminate()
    segments = sorted((agent.data / "spool" / "host").glob("*.seg"))
    last = segments[-1]
    size = last.stat().st_size
    with last.open("r+b") as handle:
        handle.truncate(size - 7)  # cut the last record in the middle
    agent = agent_factory(overrides=kafka_overrides(kafka_bootstrap, topic, f"hostfs={hostfs}", FAST_HOST))
    agent.wait_for_log("torn", 15)
    set_hostname(hostfs, "after-repair")
    messages = wait_for_topic_events(
        kafka_bootstrap, topic, lambda m: any(d["host"]["hostname"] == "after-repair" for _, d in m), 60,
        "events after the repaired spool")
    assert agent.process.poll() is None
    assert len(host_sequences(messages)) >= 5


def test_events_spooled_by_the_previous_version_are_delivered_after_an_upgrade(agent_factory, kafka_bootstrap: str,
                                                                               tmp_path: Path) -> None:
    """A HAR1 segment (the previous spool format: no routing values) left in path.data is delivered, each event
    routed and keyed by its own fields, and the upgraded collector numbers on after it."""
    prefix = f"up{uuid.uuid4().hex[:8]}"
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="upgraded")
    sample = json.loads((REPO / "actors" / "datasets" / "host" / "sample.json").read_text())
    records = []
    for sequence in (1, 2, 3):
        document = copy.deepcopy(sample)
        document["event"].update(sequence=sequence, id=str(uuid.uuid4()))
        document["host"]["id"] = "spooled-before-the-upgrade"
        records.append(encode_v1(sequence, encode_document(document)))
    spool = tmp_path / "data" / "spool" / "host"
    spool.mkdir(parents=True)
    (spool / segment_name(1)).write_bytes(b"".join(records))
    agent = agent_factory(overrides=kafka_overrides(kafka_bootstrap, prefix + "-%{[event.dataset]}",
                                                    f"hostfs={hostfs}", FAST_HOST))
    messages = wait_for_topic_events(kafka_bootstrap, f"{prefix}-host", lambda m: {1, 2, 3, 4} <= host_sequences(m),
                                     60, "the three events of the old spool and the first new one")
    keys = {document["event"]["sequence"]: (key, document["host"]["id"]) for key, document in messages}
    assert [keys[sequence][0] for sequence in (1, 2, 3)] == [b"spooled-before-the-upgrade"] * 3, \
        "each old event keyed by the host.id in its payload"
    new_key, new_host_id = keys[4]
    assert new_key == new_host_id.encode() != b"spooled-before-the-upgrade", "new events keyed by their host.id"
    assert agent.process.poll() is None


def test_events_spooled_before_the_topic_named_another_field_are_routed_by_that_field(
        agent_factory, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Spooled while the topic was fixed (only the key's field recorded), delivered once the topic names
    event.dataset: those events are routed from their payload, none misrouted or refused."""
    prefix = f"re{uuid.uuid4().hex[:8]}"
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="r0")
    first = agent_factory(overrides=kafka_overrides("127.0.0.1:1", f"{prefix}-fixed", f"hostfs={hostfs}", FAST_HOST))
    wait_for(lambda: first.committed_sequence() >= 1, 10, "the host state spooled")
    set_hostname(hostfs, "r1")
    wait_for(lambda: first.committed_sequence() >= 2, 10, "a change spooled")
    assert first.terminate() == 0
    spooled = first.committed_sequence()
    agent = agent_factory(overrides=kafka_overrides(kafka_bootstrap, prefix + "-%{[event.dataset]}",
                                                    f"hostfs={hostfs}", FAST_HOST))
    messages = wait_for_topic_events(kafka_bootstrap, f"{prefix}-host",
                                     lambda m: set(range(1, spooled + 1)) <= host_sequences(m), 60,
                                     "the events spooled under the old topic")
    assert all(key == document["host"]["id"].encode() for key, document in messages)
    assert not (agent.data / "dead-letter").exists(), "nothing refused"
    assert agent.process.poll() is None


def test_partition_hash_fields_choose_the_partition_and_the_key_stays_host_id(agent_factory,
                                                                              kafka_bootstrap: str) -> None:
    topic = f"hash-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        admin.close()
    expected = {dataset: (murmur2(dataset.encode()) & 0x7FFFFFFF) % 4 for dataset in ("host", "process")}
    assert expected["host"] != expected["process"], "two datasets whose events must land apart"
    agent = agent_factory(overrides=kafka_overrides(
        kafka_bootstrap, topic, "output.kafka.partition.hash.hash=[event.dataset]",
        "hostaudit.modules=[{module: system, datasets: [host, process], period: 1s}]"))

    def both_datasets(partitions: dict) -> bool:
        return {doc["event"]["dataset"] for messages in partitions.values() for _, doc in messages} >= set(expected)

    partitions = wait_for(lambda: (found := consume_by_partition(kafka_bootstrap, topic)) and both_datasets(found)
                          and found, 60, "host and process events")
    for partition, messages in partitions.items():
        for key, document in messages:
            assert partition == expected[document["event"]["dataset"]], "hashed by event.dataset, not by the key"
            assert key == document["host"]["id"].encode()
    assert agent.process.poll() is None


def test_oversize_event_is_truncated_tagged_and_sent(agent_factory, kafka_bootstrap: str) -> None:
    topic = f"big-{uuid.uuid4().hex[:8]}"
    agent = agent_factory(overrides=kafka_overrides(kafka_bootstrap, topic, "output.kafka.max_message_bytes=1600",
                                                    "hostaudit.modules=[{module: system, datasets: [host]}]"))
    messages = wait_for_topic_events(kafka_bootstrap, topic, lambda m: len(m) >= 1, 30, "the truncated event")
    document = messages[0][1]
    assert document["event"]["action"] == "host", "the host state event (about 2 KB) is the oversize one"
    assert "truncated" in document["tags"]
    assert document["event"]["id"] and document["host"]["id"], "identifying fields are never cut"
    agent.wait_for_log("larger than output.kafka.max_message_bytes", 5)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_test_output_reports_a_reachable_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run_cli("test", "output", "-E", f"path.data={tmp_path}", "-E", "output.kafka.enabled=true",
                     "-E", f"output.kafka.hosts=[{kafka_bootstrap}]", "-E", f"output.kafka.topic=probe-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 0, result.stderr
    assert "connection... OK" in result.stdout and "writable" in result.stdout


def test_unknown_host_is_one_clear_error_and_the_agent_stays_alive(agent_factory, tmp_path: Path) -> None:
    result = run_cli("test", "output", "-E", f"path.data={tmp_path}", "-E", "output.kafka.enabled=true",
                     "-E", "output.kafka.hosts=[no-such-host.invalid:9092]")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "ERROR" in errors[0], result.stderr
    agent = agent_factory(overrides=kafka_overrides("no-such-host.invalid:9092", "nowhere"))
    agent.wait_for_log("output unavailable", 30)
    assert agent.process.poll() is None, "a broken output never stops the agent"
    assert agent.committed_sequence() >= 1, "events are kept in the spool"


def test_tls_delivery_with_verification_and_wrong_ca_fails_clearly(agent_factory, tmp_path: Path) -> None:
    from tests.kafka_support import KafkaBroker

    material = make_ssl_material(tmp_path / "ssl")
    with KafkaBroker(tmp_path / "tls-kafka", ssl=material) as broker:
        topic = f"tls-{uuid.uuid4().hex[:8]}"
        agent = agent_factory(overrides=kafka_overrides(
            broker.ssl_bootstrap, topic, f"output.kafka.ssl.certificate_authorities=[{material.ca_pem}]"))
        wait_for_topic_events(broker.bootstrap, topic, lambda m: len(m) >= 1, 40, "an event delivered over TLS")
        result = run_cli("test", "output", "-E", f"path.data={tmp_path / 'd2'}", "-E", "output.kafka.enabled=true",
                         "-E", f"output.kafka.hosts=[{broker.ssl_bootstrap}]", "-E", "output.kafka.timeout=5s",
                         "-E", f"output.kafka.ssl.certificate_authorities=[{material.wrong_ca_pem}]")
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "ERROR" in errors[0], result.stderr
        assert agent.process.poll() is None


def test_sasl_plain_delivers_and_bad_credentials_are_one_clear_error_without_the_password(
        agent_factory, tmp_path: Path) -> None:
    from tests.kafka_support import KafkaBroker

    with KafkaBroker(tmp_path / "sasl-kafka", sasl_users={"agent": "right-pass-123"}) as broker:
        topic = f"sasl-{uuid.uuid4().hex[:8]}"
        agent = agent_factory(overrides=kafka_overrides(broker.sasl_bootstrap, topic, "output.kafka.username=agent"),
                              env={"HOSTAUDIT_OUTPUT__KAFKA__PASSWORD": "right-pass-123"})
        wait_for_topic_events(broker.bootstrap, topic, lambda m: len(m) >= 1, 40, "an event delivered over SASL")
        result = run_cli("test", "output", "-E", f"path.data={tmp_path / 'd2'}", "-E", "output.kafka.enabled=true",
                         "-E", f"output.kafka.hosts=[{broker.sasl_bootstrap}]", "-E", "output.kafka.timeout=5s",
                         "-E", "output.kafka.username=agent", "-E", "output.kafka.password=wrong-pass-456")
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "ERROR" in errors[0], result.stderr
        assert "wrong-pass-456" not in result.stdout + result.stderr
        bad = agent_factory(workdir=tmp_path / "bad", overrides=kafka_overrides(
            broker.sasl_bootstrap, topic, "output.kafka.username=agent", "output.kafka.password=wrong-pass-456"))
        bad.wait_for_log("output unavailable", 30)
        assert bad.process.poll() is None, "bad credentials never stop the agent"
        assert "wrong-pass-456" not in bad.log() and "right-pass-123" not in agent.log()
