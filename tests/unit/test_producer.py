"""The producer: per-dataset batches and backoff, dead letters, acknowledgement after the output took them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from actors.outputs import Outgoing, OutputError, Rejection
from actors.runtime.producer import ProducerActor
from actors.runtime.spool import SpoolWriter


class FlakyForOneDataset:
    """An output (the Output protocol) that cannot take `broken`'s events now, and refuses for good any event
    whose message is 'poison'."""

    def __init__(self, broken: str) -> None:
        self.broken = broken
        self.taken: list[dict] = []

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        documents = [json.loads(event.payload) for event in batch]
        if any(d["event"]["dataset"] == self.broken for d in documents):
            raise OutputError(f"{self.broken} is down")
        rejections = [(i, "poison") for i, d in enumerate(documents) if d["message"] == "poison"]
        self.taken += [d for i, d in enumerate(documents) if (i, "poison") not in rejections]
        return rejections

    def close(self) -> None:
        pass


def spool(data: Path, dataset: str, messages: list[str]) -> None:
    with SpoolWriter(data / "spool" / dataset, fsync=False) as writer:
        writer.append([(n + 1, json.dumps({"event": {"dataset": dataset}, "message": m,
                                           "@timestamp": "2026-01-01T00:00:00.000Z"}).encode())
                       for n, m in enumerate(messages)])


def test_a_failing_dataset_backs_off_alone_and_the_others_are_delivered(tmp_path: Path) -> None:
    spool(tmp_path, "host", ["h1", "h2"])
    spool(tmp_path, "process", ["p1", "p2"])
    output = FlakyForOneDataset(broken="host")
    producer = ProducerActor(tmp_path, output, backoff_initial=60.0)
    first = producer.pump()
    assert [d["message"] for d in output.taken] == ["p1", "p2"]
    assert first.more and 59 < first.retry_after <= 60.0
    # nothing new for process, and the host batch is not retried before its backoff is due
    assert not producer.pump().more
    assert producer.stats.acknowledged == {"process": 2}
    assert producer.stats.failed_batches == 1


def test_an_event_refused_for_good_is_dead_lettered_and_the_batch_acknowledged(tmp_path: Path) -> None:
    spool(tmp_path, "user", ["u1", "poison", "u3"])
    output = FlakyForOneDataset(broken="none")
    producer = ProducerActor(tmp_path, output)
    assert producer.pump().more
    assert [d["message"] for d in output.taken] == ["u1", "u3"]
    lines = (tmp_path / "dead-letter" / "user.ndjson").read_text().splitlines()
    kept = json.loads(lines[0])
    assert len(lines) == 1 and kept["reason"] == "poison" and kept["sequence"] == 2
    assert kept["event"]["message"] == "poison"
    assert producer.stats.dead_lettered == {"user": 1} and producer.stats.acknowledged == {"user": 2}
    assert not producer.pump().more, "acknowledged: not sent again"
