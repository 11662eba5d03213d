"""The dead-letter topic: records that cannot be indexed, each with the reason, sent and acknowledged (acks=all)
before their batch counts as done, so none is lost between Kafka and the engine."""

from __future__ import annotations

import json
import logging
import ssl
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from actors.indexer.documents import Refused
from actors.outputs.kafka import close_producer, describe_error, producer_config

log = logging.getLogger("hostaudit.indexer.dead_letter")

MAX_RECORD_BYTES = 1_000_000  # the broker's default message.max.bytes (1 MiB) less room for the framing
LOG_LIMIT_PER_MINUTE = 10  # refusals logged one by one; beyond this a count per minute


class DeadLetterUnavailable(Exception):
    """The dead-letter topic could not take the records (Kafka unreachable, timeout): try again later."""


def dead_letter_record(refused: Refused, failed_at: str) -> bytes:
    """`{"reason", "failed_at", "source": {topic, partition, offset}, "event"}`: `event` is the record as it
    was when it is JSON, else its text (`"malformed": true`); cut to fit the broker's limit (`"truncated": true`)."""
    head: dict[str, Any] = {"reason": refused.reason, "failed_at": failed_at,
                            "source": {"topic": refused.source.topic, "partition": refused.source.partition,
                                       "offset": refused.source.offset}}
    payload = refused.payload or b""
    raw_json = bool(payload) and refused.is_json
    if raw_json and len(payload) < MAX_RECORD_BYTES - 4096:
        return json.dumps(head)[:-1].encode() + b',"event":' + payload + b"}"
    text = payload.decode("utf-8", "backslashreplace")
    if not raw_json:
        head["malformed"] = True
    if len(payload) >= MAX_RECORD_BYTES - 4096:
        text, head["truncated"] = text[:(MAX_RECORD_BYTES - 8192) // 4], True
    head["event"] = text
    return json.dumps(head).encode()


class DeadLetters:
    """Sends refused records to the dead-letter topic, keyed as the originals, and returns once the broker
    acknowledged every one; DeadLetterUnavailable otherwise (the client is then discarded and made anew)."""

    def __init__(self, client: Mapping[str, Any], topic: str) -> None:
        self.client, self.topic = client, topic
        self.timeout = float(client.get("timeout", 30))
        self._producer: KafkaProducer | None = None
        self._logged_minute, self._logged = 0, 0

    def _client(self) -> KafkaProducer:
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**producer_config(self.client))
            except (KafkaError, ssl.SSLError, OSError) as error:
                raise DeadLetterUnavailable(f"cannot connect to Kafka for the dead-letter topic {self.topic}: "
                                            f"{describe_error(error)}") from None
        return self._producer

    def send(self, refused: Sequence[Refused]) -> None:
        if not refused:
            return
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        producer = self._client()
        try:
            futures = [producer.send(self.topic, value=dead_letter_record(item, now), key=item.source.key)
                       for item in refused]
            producer.flush(timeout=self.timeout)
            for future in futures:
                if not future.is_done or future.failed():
                    raise DeadLetterUnavailable(f"the dead-letter topic {self.topic} did not take a record: "
                                                f"{describe_error(future.exception) if future.is_done else 'timeout'}")
        except (KafkaError, OSError, ssl.SSLError) as error:
            self._reset()
            raise DeadLetterUnavailable(f"dead-letter topic {self.topic}: {describe_error(error)}") from None
        except DeadLetterUnavailable:
            self._reset()
            raise
        self._log(refused)

    def _log(self, refused: Sequence[Refused]) -> None:
        """One warning per refused record (naming where it came from and why), at most LOG_LIMIT_PER_MINUTE a
        minute; the rest are counted in /stats."""
        minute = int(time.monotonic() // 60)
        if minute != self._logged_minute:
            if self._logged > LOG_LIMIT_PER_MINUTE:
                log.warning("%d more records went to the dead-letter topic %s in the last minute (see /stats)",
                            self._logged - LOG_LIMIT_PER_MINUTE, self.topic)
            self._logged_minute, self._logged = minute, 0
        for item in refused:
            self._logged += 1
            if self._logged <= LOG_LIMIT_PER_MINUTE:
                log.warning("%s: not indexed, sent to the dead-letter topic %s: %s", item.source, self.topic,
                            item.reason)

    def _reset(self) -> None:
        self._producer = close_producer(self._producer, 0)

    def close(self) -> None:
        self._producer = close_producer(self._producer, self.timeout, "the dead-letter producer")
