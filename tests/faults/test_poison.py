"""A poison event never blocks the others: refused events go to the dead-letter file, the rest flow."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.faults.support import run_marked
from tests.kafka_support import wait_for_topic_events

pytestmark = pytest.mark.kafka

HOST_AND_PROCESS = "hostaudit.modules=[{module: system, datasets: [host, process], period: 1s}]"


def start_routed_by_user(agent_factory, bootstrap: str, prefix: str, default: str):
    """An agent whose Kafka topic is `<prefix>-%{[user.name]<default>}` (host events have no user.name),
    once root's processes are on `<prefix>-root`."""
    agent = agent_factory(overrides=(
        HOST_AND_PROCESS, "output.file.enabled=false", "output.kafka.enabled=true",
        f"output.kafka.hosts=[{bootstrap}]", f"output.kafka.topic={prefix}-%{{[user.name]{default}}}",
        "output.kafka.timeout=5s", "output.kafka.backoff.init=200ms", "output.kafka.backoff.max=2s"))
    wait_for_topic_events(bootstrap, f"{prefix}-root", lambda m: len(m) > 0, 60,
                          "the process state report (root's processes) on its topic")
    return agent


def test_event_without_the_topic_field_is_dead_lettered_and_the_rest_delivered(agent_factory, kafka_bootstrap,
                                                                                tmp_path) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}"
    agent = start_routed_by_user(agent_factory, kafka_bootstrap, prefix, "")
    marker = f"poison-{uuid.uuid4().hex}"
    run_marked(marker)
    messages = wait_for_topic_events(
        kafka_bootstrap, f"{prefix}-root",
        lambda m: any(marker in doc.get("process", {}).get("args", []) for _, doc in m), 30,
        "the process event on its topic although host events cannot be routed")
    assert all(doc["event"]["dataset"] == "process" for _, doc in messages)
    dead_letters = agent.data / "dead-letter" / "host.ndjson"
    lines = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert lines, "host events kept in the dead-letter file"
    assert lines[0]["reason"] == "no field 'user.name' for the output.kafka topic or key format string"
    assert lines[0]["event"]["event"]["dataset"] == "host"
    assert oct(dead_letters.stat().st_mode & 0o777) == "0o600"
    agent.wait_for_log("refused by the output for good", 5)
    # and it goes on: a later exec is delivered too
    later = f"later-{uuid.uuid4().hex}"
    run_marked(later)
    wait_for_topic_events(kafka_bootstrap, f"{prefix}-root",
                          lambda m: any(later in doc.get("process", {}).get("args", []) for _, doc in m), 30,
                          "a later process event")


def test_event_for_a_topic_kafka_refuses_is_dead_lettered_and_the_rest_delivered(agent_factory,
                                                                                   kafka_bootstrap) -> None:
    prefix = f"q{uuid.uuid4().hex[:8]}"
    agent = start_routed_by_user(agent_factory, kafka_bootstrap, prefix, ":not a topic!")
    marker = f"refused-{uuid.uuid4().hex}"
    run_marked(marker)
    wait_for_topic_events(kafka_bootstrap, f"{prefix}-root",
                          lambda m: any(marker in doc.get("process", {}).get("args", []) for _, doc in m), 30,
                          "a process event after host events were refused")
    lines = [json.loads(line) for line in (agent.data / "dead-letter" / "host.ndjson").read_text().splitlines()]
    assert lines and lines[0]["reason"].startswith(f"topic '{prefix}-not a topic!' refused: Topic name")
    assert agent.role_pid("producer") is not None and "restart attempt" not in agent.log(), "no crash loop"
