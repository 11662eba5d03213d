"""The Kafka output: idempotent, acks=all delivery of spooled events with Beats-compatible settings."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import re
import ssl
import sys
import time
from collections import abc
from json.decoder import WHITESPACE, scanstring
from typing import Any, Mapping, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaConfigurationError, KafkaError, KafkaTimeoutError
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import murmur2

from actors.outputs import OutputError, Rejection

log = logging.getLogger("hostaudit.kafka")

_FIELD_REFERENCE = re.compile(r"%\{\[([^\]]+)\](?::([^}]*))?\}")
RECORD_OVERHEAD_BYTES = 256  # key, headers and record framing, kept free below max_message_bytes
TRUNCATED_TAG = "truncated"


# --- format strings ---------------------------------------------------------------------------------------
def lookup(document: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted field path (`event.dataset`), or None."""
    return _lookup(document, dotted.split("."))


def _lookup(document: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = document
    for part in path:
        # isinstance(dict) first: parsed JSON is all dicts, and the ABC check alone costs a µs per field
        if not (isinstance(value, dict) or isinstance(value, abc.Mapping)) or part not in value:
            return None
        value = value[part]
    return value


class FormatString:
    """A Beats format string (`%{[field.path]}`, `%{[field.path]:default}`), split once into literal text and
    field references so that rendering it per event costs no regular expression."""

    def __init__(self, template: str) -> None:
        self.template = template
        # (literal text before, field path, its parts, default)
        self._pieces: list[tuple[str, str, tuple[str, ...], str | None]] = []
        position = 0
        for match in _FIELD_REFERENCE.finditer(template):
            field = match.group(1)
            self._pieces.append((template[position:match.start()], field, tuple(field.split(".")), match.group(2)))
            position = match.end()
        self._tail = template[position:]
        # The top-level members an event needs for rendering (`host` for `%{[host.id]}`).
        self.members = frozenset(path[0] for _, _, path, _ in self._pieces)

    def render(self, document: Mapping[str, Any]) -> str:
        """The template expanded against `document`; KeyError(field) for a missing field without a default."""
        if not self._pieces:
            return self._tail
        out = []
        for literal, field, path, default in self._pieces:
            value = _lookup(document, path)
            if value is None:
                if default is None:
                    raise KeyError(field)
                value = default
            out.append(literal)
            out.append(value if type(value) is str else str(value))
        out.append(self._tail)
        return "".join(out)


@functools.lru_cache(maxsize=64)
def compile_format(template: str) -> FormatString:
    return FormatString(template)


def render(template: str, document: Mapping[str, Any]) -> str:
    """Expand Beats format references `%{[field.path]}` and `%{[field.path]:default}` against an event."""
    return compile_format(template).render(document)


_DECODER = json.JSONDecoder()  # json.loads' own settings; its scan_once is the C scanner
_scan_value = _DECODER.scan_once
_JSON_WHITESPACE = " \t\n\r"
# Key strings json.dumps produces from non-str dict keys (True, None, 1, 2.5, inf): only such a key can occur
# twice in an object encoded from a dict, where json.loads keeps the last and TopLevelMembers the first.
_COERCIBLE_KEY = re.compile(r"true|false|null|NaN|-?Infinity|[-+.0-9eE]+")


class TopLevelMembers:
    """Reads chosen top-level members of encoded events, each exactly as `json.loads(payload)[name]` would,
    without parsing the rest of the event.

    Equivalent to `{n: v for n, v in json.loads(payload).items() if n in names}` for every payload the
    collector's encoder writes: compact UTF-8 JSON of a dict, so it starts with `{` and holds no duplicate key
    among `names` (a dict's keys are unique; only a non-str key, which json.dumps turns into `true`, `1`...,
    can repeat another, and such names are read with json.loads). Anything else, including JSON that is
    invalid before the members needed, is left to json.loads. Invalid JSON after them is not detected: the
    event is sent as it is.

    Events repeat their common fields (agent, ecs, service, host follow `@timestamp`), so the reader
    remembers the text from the second member up to the separator after the last member it needed: when the
    next event has exactly that text at the same place, parsing it would give the same members, and they are
    reused. The separator ends the text, so no token (a number) can continue past it. The values returned
    are shared between events: read them, do not modify them.
    """

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._full_parse = any(_COERCIBLE_KEY.fullmatch(name) for name in names)
        self._span = ""  # member text (from a second member, ending with ",") parsed last time
        self._span_members: dict[str, Any] = {}

    def __call__(self, payload: bytes) -> dict[str, Any]:
        if self._full_parse or not payload.startswith(b"{"):
            return self._parse_all(payload)
        names = self.names
        found: dict[str, Any] = {}
        whitespace = WHITESPACE.match
        index = 1
        second, first = 0, ""  # where the second member starts; the first member's name
        try:
            text = payload.decode("utf-8", "surrogatepass")  # as json.loads decodes UTF-8
            if text[index] in _JSON_WHITESPACE:
                index = whitespace(text, index).end()
            if text[index] == "}":
                return found
            while True:
                if second and index == second and self._span and text.startswith(self._span, index):
                    found.update(self._span_members)
                    if len(found) == len(names):
                        return found
                    index += len(self._span)
                    second = -1  # parsing on after the remembered text: nothing to remember this time
                    if text[index] in _JSON_WHITESPACE:
                        index = whitespace(text, index).end()
                    continue
                if text[index] != '"':
                    raise ValueError("member name expected")
                name, index = scanstring(text, index + 1, True)
                if text[index] != ":":
                    index = whitespace(text, index).end()
                    if text[index] != ":":
                        raise ValueError("':' expected")
                index += 1
                if text[index] in _JSON_WHITESPACE:
                    index = whitespace(text, index).end()
                value, index = _scan_value(text, index)
                if name in names:
                    found[name] = value
                if text[index] in _JSON_WHITESPACE:
                    index = whitespace(text, index).end()
                if text[index] == "}":
                    return found
                if text[index] != ",":
                    raise ValueError("',' or '}' expected")
                index += 1
                if len(found) == len(names):
                    if second > 0:
                        self._span = text[second:index]
                        self._span_members = {name: found[name] for name in found if name != first}
                    return found
                if text[index] in _JSON_WHITESPACE:
                    index = whitespace(text, index).end()
                if not second:
                    second, first = index, name
        except (ValueError, IndexError, StopIteration):
            return self._parse_all(payload)  # not what our encoder writes: the full parser decides (and raises)

    def _parse_all(self, payload: bytes) -> dict[str, Any]:
        document = json.loads(payload)
        if not isinstance(document, dict):
            return {}
        return {name: document[name] for name in self.names if name in document}


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
class _BeatsPartitioner(Partitioner):
    """Adapts a `choose(key, all_partitions, available)` rule to kafka-python's Partitioner interface."""

    reachable_only = False

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        all_partitions = sorted(cluster.partitions_for_topic(topic))
        # Only a reachable_only partitioner looks at `available` (it is [] otherwise: one lookup less per event).
        available = sorted(cluster.available_partitions_for_topic(topic)) if self.reachable_only else []
        return self(serialized_key, all_partitions, available)

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
    """Beats' `partition.hash`: murmur2 of the key (Java client compatible), random when there is no key."""

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


def _ssl_context(tls: Mapping[str, Any]) -> ssl.SSLContext:
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
    tls = options.get("ssl") or {}
    sasl = options.get("sasl") or {}
    use_tls = bool(tls.get("enabled"))
    use_sasl = bool(options.get("username"))
    config["security_protocol"] = {(False, False): "PLAINTEXT", (True, False): "SSL",
                                   (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[(use_tls, use_sasl)]
    if use_tls:
        config["ssl_context"] = _ssl_context(tls)
    if use_sasl:
        config["sasl_mechanism"] = sasl.get("mechanism") or "PLAIN"
        config["sasl_plain_username"] = options["username"]
        config["sasl_plain_password"] = _reveal(options.get("password"))
    return config


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
        members = self._topic.members | (self._key.members if self._key is not None else frozenset())
        self._members = TopLevelMembers(members) if members else None
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

    def _record(self, payload: bytes) -> tuple[str, bytes | None, bytes]:
        """Topic, key and value of one encoded event. Only the top-level members the format strings name
        are parsed (`host` for the default key): the rest of the event is never decoded. KeyError(field)
        when the event lacks a field the topic or key needs."""
        document = self._members(payload) if self._members is not None else {}
        topic = self._topic.render(document)
        key = self._key.render(document).encode() if self._key is not None else None
        if len(payload) > self.limit:
            fitted = fit_to_size(payload, self.limit)
            self.truncated += 1
            log.warning("event %s is larger than output.kafka.max_message_bytes; its longest strings were "
                        "truncated (tags: truncated)", _event_id(payload))
            return topic, key, fitted
        return topic, key, payload

    def publish(self, batch: Sequence[bytes]) -> Sequence[Rejection]:
        """Send the batch; return the events refused for good (no field to route by, a topic the broker
        rejects for good) so one poison event never holds back the others."""
        producer = self._client()
        send, record, headers = producer.send, self._record, self.headers or None
        rejections: list[Rejection] = []
        try:
            futures = []
            for index, payload in enumerate(batch):
                try:
                    topic, key, value = record(payload)
                except KeyError as missing:
                    rejections.append((index, f"no field {missing} for the output.kafka topic or key format string"))
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
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except (KafkaError, OSError):
                pass  # the client is being discarded after a failure anyway
            self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=self.timeout)
            except (KafkaError, OSError) as error:
                log.warning("closing the Kafka client: %s", describe_error(error))
            self._producer = None


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
