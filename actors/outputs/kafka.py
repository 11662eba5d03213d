"""The Kafka output: idempotent, acks=all delivery of spooled events with Beats-compatible settings."""

from __future__ import annotations

import itertools
import json
import logging
import random
import ssl
import sys
import time
from typing import Any, Mapping, NamedTuple, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaConfigurationError, KafkaError, KafkaTimeoutError
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import murmur2
from kafka.serializer import Serializer

from actors.outputs import Outgoing, OutputError, Rejection
# FormatString is also imported from here by the configuration checks.
from actors.outputs.routing import (FormatString, RoutingValues, Unrecorded, hash_fields, lookup, render,
                                    routing_fields, routing_values)

log = logging.getLogger("hostaudit.kafka")

RECORD_OVERHEAD_BYTES = 256  # key, headers and record framing, kept free below max_message_bytes
TRUNCATED_TAG = "truncated"


# --- oversize events --------------------------------------------------------------------------------------
def _strings(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[int, tuple[Any, ...]]]:
    found: list[tuple[int, tuple[Any, ...]]] = []
    if isinstance(value, str):
        found.append((len(value.encode()), path))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found += _strings(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _strings(item, path + (index,))
    return found


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


IDENTIFYING_FIELDS = (("@timestamp",), ("event", "id"), ("event", "dataset"), ("event", "sequence"),
                      ("event", "kind"), ("event", "action"), ("host", "id"), ("agent", "id"), ("tags",))


def _skeleton(document: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields that identify an event (what is left when nothing else fits)."""
    skeleton: dict[str, Any] = {}
    for path in IDENTIFYING_FIELDS:
        value = lookup(document, ".".join(path))
        if value is not None:
            target = skeleton
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
    return skeleton


def fit_to_size(payload: bytes, limit: int) -> bytes:
    """Return `payload` unchanged if it fits in `limit` bytes; else the event with its longest strings cut
    and `truncated` added to `tags`. If cutting strings is not enough, only the identifying fields and the
    start of the message are kept: an oversize event is always sent, never left blocking the queue."""
    if len(payload) <= limit:
        return payload
    document = json.loads(payload)
    tags = document.setdefault("tags", [])
    if TRUNCATED_TAG not in tags:
        tags.append(TRUNCATED_TAG)
    protected = set(IDENTIFYING_FIELDS)
    for _ in range(64):
        encoded = _encode(document)
        excess = len(encoded) - limit
        if excess <= 0:
            return encoded
        candidates = sorted((s for s in _strings(document) if s[1] not in protected), reverse=True)
        if not candidates or candidates[0][0] <= 32:
            break
        size, path = candidates[0]
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = parent[path[-1]].encode()[:max(16, size - excess - 8)].decode(errors="ignore") + "…"
    skeleton = _skeleton(document)
    message = str(json.loads(payload).get("message", ""))
    room = limit - len(_encode(skeleton)) - 16
    if room > 0 and message:
        skeleton["message"] = message.encode()[:room].decode(errors="ignore")
    return _encode(skeleton)


# --- partitioners -----------------------------------------------------------------------------------------
class HashedKey(NamedTuple):
    """A record key sent with what `partition.hash` hashes instead of it: the `partition.hash.hash` field values
    (None: a field is missing, a random partition). The key serializer sends `key` alone."""

    key: bytes | None
    hash_input: bytes | None


class HashedKeySerializer(Serializer):
    """Serializes a HashedKey as its record key (configured only when `partition.hash.hash` names fields)."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        return data.key if type(data) is HashedKey else data


class _BeatsPartitioner(Partitioner):
    """Adapts a `choose(key, all_partitions, available)` rule to kafka-python's Partitioner interface."""

    reachable_only = False

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        all_partitions = sorted(cluster.partitions_for_topic(topic))
        # Only a reachable_only partitioner looks at `available` (it is [] otherwise: one lookup less per event).
        available = sorted(cluster.available_partitions_for_topic(topic)) if self.reachable_only else []
        return self(key.hash_input if type(key) is HashedKey else serialized_key, all_partitions, available)

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        raise NotImplementedError


class RoundRobinPartitioner(_BeatsPartitioner):
    """Beats' `partition.round_robin`: `group_events` events to one partition, then the next."""

    def __init__(self, group_events: int = 1, reachable_only: bool = False) -> None:
        self.group_events, self.reachable_only = group_events, reachable_only
        self._counter = itertools.count()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        partitions = available if self.reachable_only and available else all_partitions
        return partitions[(next(self._counter) // self.group_events) % len(partitions)]


class RandomPartitioner(_BeatsPartitioner):
    """Beats' `partition.random`: a random partition, kept for `group_events` events."""

    def __init__(self, group_events: int = 1, reachable_only: bool = False) -> None:
        self.group_events, self.reachable_only = group_events, reachable_only
        self._left, self._current = 0, 0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        partitions = available if self.reachable_only and available else all_partitions
        if self._left <= 0 or self._current not in partitions:
            self._current, self._left = random.choice(partitions), self.group_events
        self._left -= 1
        return self._current


class HashPartitioner(_BeatsPartitioner):
    """Beats' `partition.hash`: murmur2 of the key (Java client compatible), or of the `hash` fields' values when
    it names fields (see KafkaOutput); random when there is no key (or a hash field is missing)."""

    HASHES_KEPT = 1024  # distinct keys whose hash is remembered (an agent has one host.id: one key)

    def __init__(self, random_fallback: bool = True, reachable_only: bool = False) -> None:
        self.random_fallback, self.reachable_only = random_fallback, reachable_only
        self._hashes: dict[bytes, int] = {}  # murmur2 is pure Python: about 5 µs per 32-byte key

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        partitions = available if self.reachable_only and available else all_partitions
        if key is None:
            return random.choice(partitions)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.HASHES_KEPT:
                self._hashes.clear()
            hashed = self._hashes[bytes(key)] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]


def make_partitioner(partition: Mapping[str, Any]) -> _BeatsPartitioner:
    (kind, options), = partition.items() if partition else (("hash", {}),)
    reachable_only = bool(options.get("reachable_only", False))
    if kind == "round_robin":
        return RoundRobinPartitioner(int(options.get("group_events", 1)), reachable_only)
    if kind == "random":
        return RandomPartitioner(int(options.get("group_events", 1)), reachable_only)
    return HashPartitioner(bool(options.get("random", True)), reachable_only)


# --- client configuration ---------------------------------------------------------------------------------
def _reveal(secret: Any) -> str | None:
    return secret.reveal() if hasattr(secret, "reveal") else secret


def ssl_context(tls: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    authorities = tls.get("certificate_authorities") or ()
    for authority in authorities:
        context.load_verify_locations(cafile=authority)
    mode = tls.get("verification_mode", "full")
    if mode == "certificate":
        context.check_hostname = False
    elif mode == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.get("certificate"):
        context.load_cert_chain(tls["certificate"], tls.get("key"), _reveal(tls.get("key_passphrase")))
    return context


def producer_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """kafka-python KafkaProducer arguments for `output.kafka` settings."""
    timeout_ms = int(float(options.get("timeout", 30)) * 1000)
    compression = options.get("compression", "lz4")
    config: dict[str, Any] = {
        "bootstrap_servers": list(options["hosts"]),
        "client_id": options.get("client_id", "hostaudit"),
        "acks": "all",
        "enable_idempotence": True,  # explicit: kafka-python then raises on a conflicting setting
        "compression_type": None if compression in (None, "none") else compression,
        "max_request_size": int(options.get("max_message_bytes", 1_000_000)),
        "linger_ms": int(float(options.get("bulk_flush_frequency", 0)) * 1000),
        "batch_size": 256 * 1024,
        "request_timeout_ms": timeout_ms,
        "max_block_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,
        "delivery_timeout_ms": max(timeout_ms + 1000, 2 * timeout_ms),
        "partitioner": make_partitioner(options.get("partition") or {}),
        "reconnect_backoff_max_ms": 10_000,
    }
    if hash_fields(options):
        config["key_serializer"] = HashedKeySerializer()
    tls = options.get("ssl") or {}
    sasl = options.get("sasl") or {}
    use_tls = bool(tls.get("enabled"))
    use_sasl = bool(options.get("username"))
    config["security_protocol"] = {(False, False): "PLAINTEXT", (True, False): "SSL",
                                   (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[(use_tls, use_sasl)]
    if use_tls:
        config["ssl_context"] = ssl_context(tls)
    if use_sasl:
        config["sasl_mechanism"] = sasl.get("mechanism") or "PLAIN"
        config["sasl_plain_username"] = options["username"]
        config["sasl_plain_password"] = _reveal(options.get("password"))
    return config


class NoHashField(LookupError):
    """An event lacks a `partition.hash.hash` field and `partition.hash.random` is off: Beats drops it."""


class KafkaOutput:
    """Sends each batch and returns only when the broker acknowledged every event of it.

    On any failure the client is closed (its queued records dropped) and OutputError raised: the producer
    actor keeps the batch in the spool and sends it again with a fresh client, so a retry never piles copies
    up inside the client. Duplicates after a failure are possible (at-least-once); downstream drops them by
    `event.id`.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self.topic = str(options.get("topic", "hostaudit"))
        self.key = str(options.get("key") or "")
        self._topic = FormatString(self.topic)
        self._key = FormatString(self.key) if self.key else None
        self._hash_fields = hash_fields(options)
        self._hash_random = bool(((options.get("partition") or {}).get("hash") or {}).get("random", True))
        self.fields = routing_fields("kafka", options)  # what the collector records for this output
        self.reparsed = 0  # events routed from their payload: spooled without the routing values needed
        self.headers = [(str(h["key"]), str(h["value"]).encode()) for h in options.get("headers") or ()]
        self.limit = int(options.get("max_message_bytes", 1_000_000)) - RECORD_OVERHEAD_BYTES
        self.timeout = float(options.get("timeout", 30))
        self._producer: KafkaProducer | None = None
        self.truncated = 0

    def _client(self) -> KafkaProducer:
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**producer_config(self.options))
            except KafkaConfigurationError as error:
                raise OutputError(f"output.kafka: invalid client configuration: {error}") from error
            except (KafkaError, ssl.SSLError, OSError) as error:
                raise OutputError(f"cannot connect to Kafka at {', '.join(self.options['hosts'])}: "
                                  f"{describe_error(error)}") from error
        return self._producer

    def _route(self, event: Outgoing) -> tuple[str, bytes | HashedKey | None]:
        """Topic and key of one event, from the routing values the collector recorded beside it. KeyError(field)
        when the event lacks a field the topic or key needs (no default), NoHashField when it lacks a
        `partition.hash.hash` field and `random` is off; ValueError when it has to be routed from a payload that
        is not a JSON object."""
        routing = event.routing
        if routing is not None:
            try:
                return self._route_by(routing)
            except Unrecorded:
                pass  # spooled when the output routed by other fields
        # Spooled by an older version (no routing values), or without a field named since: parse it (rare).
        self.reparsed += 1
        document = json.loads(event.payload)
        if not isinstance(document, dict):
            raise ValueError("the event is not a JSON object")
        return self._route_by(routing_values(document, self.fields))

    def _route_by(self, values: RoutingValues) -> tuple[str, bytes | HashedKey | None]:
        topic = self._topic.render_values(values)
        key = self._key.render_values(values).encode() if self._key is not None else None
        if not self._hash_fields:
            return topic, key
        texts = []
        for field in self._hash_fields:
            try:
                text = values[field]
            except KeyError:
                raise Unrecorded(field) from None
            if text is None:
                if self._hash_random:
                    return topic, HashedKey(key, None)  # as Beats: a random partition when a field is missing
                raise NoHashField(field)
            texts.append(text)
        return topic, HashedKey(key, "\0".join(texts).encode())

    def _record(self, event: Outgoing) -> tuple[str, bytes | HashedKey | None, bytes]:
        """Topic, key and value of one event (the value cut to fit max_message_bytes)."""
        topic, key = self._route(event)
        payload = event.payload
        if len(payload) > self.limit:
            fitted = fit_to_size(payload, self.limit)
            self.truncated += 1
            log.warning("event %s is larger than output.kafka.max_message_bytes; its longest strings were "
                        "truncated (tags: truncated)", _event_id(payload))
            return topic, key, fitted
        return topic, key, payload

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        """Send the batch; return the events refused for good (no field to route by, a topic the broker
        rejects for good) so one poison event never holds back the others."""
        producer = self._client()
        send, record, headers = producer.send, self._record, self.headers or None
        rejections: list[Rejection] = []
        try:
            futures = []
            for index, event in enumerate(batch):
                try:
                    topic, key, value = record(event)
                except KeyError as missing:
                    rejections.append((index, f"no field {missing} for the output.kafka topic or key format string"))
                    continue
                except NoHashField as missing:
                    rejections.append((index, f"no field {missing} for output.kafka.partition.hash.hash "
                                              "(random: false)"))
                    continue
                except ValueError as error:  # routed or cut from its payload, which is not JSON
                    rejections.append((index, f"the event is not a valid JSON object ({error})"))
                    continue
                try:
                    futures.append((index, send(topic, value=value, key=key, headers=headers)))
                except ValueError as error:  # the client refuses the topic name itself (illegal characters)
                    rejections.append((index, f"topic {topic!r} refused: {error}"))
                except KafkaError as error:
                    if error.retriable or isinstance(error, KafkaTimeoutError):
                        raise
                    rejections.append((index, f"Kafka refused the event for topic {topic!r}: "
                                              f"{describe_error(error)}"))
            producer.flush(timeout=self.timeout)
            for index, future in futures:
                if not future.is_done:
                    raise OutputError("Kafka did not acknowledge the batch in output.kafka.timeout")
                if future.failed():
                    error = future.exception
                    if isinstance(error, KafkaError) and not error.retriable and \
                            not isinstance(error, KafkaTimeoutError):
                        rejections.append((index, f"Kafka refused the event: {describe_error(error)}"))
                        continue
                    raise OutputError(f"Kafka refused an event: {describe_error(error)}")
        except (KafkaError, OSError, ssl.SSLError) as error:
            self._reset()
            raise OutputError(describe_error(error)) from error
        except OutputError:
            self._reset()
            raise
        rejections.sort()
        return rejections

    def _reset(self) -> None:
        self._producer = close_producer(self._producer, 0)

    def close(self) -> None:
        self._producer = close_producer(self._producer, self.timeout, "the Kafka client")


def close_producer(producer: KafkaProducer | None, timeout: float, what: str = "") -> None:
    """Close `producer` (if any) within `timeout` seconds; returns None for the caller to keep. A failure is
    logged naming `what`, or ignored when `what` is "" (a client discarded after a failure anyway)."""
    if producer is not None:
        try:
            producer.close(timeout=timeout)
        except (KafkaError, OSError) as error:
            if what:
                log.warning("closing %s: %s", what, describe_error(error))
    return None


def _event_id(payload: bytes) -> Any:
    """`event.id` of an encoded event for a log line (None when unreadable): only on the rare error paths."""
    try:
        return lookup(json.loads(payload), "event.id")
    except ValueError:
        return None


def describe_error(error: BaseException | None) -> str:
    """One line for a client error: its class and message, never credentials (kafka-python includes none)."""
    if error is None:
        return "unknown error"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_kafka(options: Mapping[str, Any]) -> int:
    """`hostaudit test output` for Kafka: connect, fetch metadata for the topic (creating it if the broker
    allows), report in Beats' style."""
    hosts = ", ".join(options["hosts"])
    print(f"kafka: {hosts}...")
    config = producer_config(options)
    config["max_block_ms"] = min(config["max_block_ms"], 10_000)
    started = time.monotonic()
    try:
        producer = KafkaProducer(**config)
    except (KafkaError, ssl.SSLError, OSError) as error:
        print(f"  connection... ERROR {describe_error(error)}", file=sys.stderr)
        return 1
    print(f"  connection... OK ({config['security_protocol']}, {time.monotonic() - started:.2f} s)")
    topic = str(options.get("topic", "hostaudit"))
    if "%{" in topic:
        topic = render(topic, {"event": {"dataset": "host"}, "host": {"id": "test"}})
    try:
        partitions = producer.partitions_for(topic)
    except (KafkaError, OSError) as error:
        print(f"  topic {topic}... ERROR {describe_error(error)}", file=sys.stderr)
        producer.close(timeout=0)
        return 1
    producer.close(timeout=1)
    if not partitions:
        print(f"  topic {topic}... ERROR it does not exist and the broker does not create topics", file=sys.stderr)
        return 1
    print(f"  topic {topic}... OK ({len(partitions)} partition(s), writable)")
    return 0
