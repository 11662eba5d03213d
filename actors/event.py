"""The one Event type that flows from a dataset to every output, the ECS document it becomes, and its change
descriptions (`system.audit.changes`)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

ECS_VERSION = "9.4.0"

STATE = "state"
CHANGE = "event"


def encode_document(document: Any) -> bytes:
    """Serialise one ECS document as compact UTF-8 JSON (undecodable bytes from /proc become U+FFFD).

    orjson writes the same bytes as `json.dumps(separators=(",", ":"), ensure_ascii=False)` in a tenth of the
    time, but NaN and infinities as null (JSON has no such numbers); what it refuses (a lone surrogate from a
    path decoded with surrogateescape, an int beyond 64 bits) takes the json module's way, which replaces what
    cannot be encoded, with the same nulls."""
    try:
        return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(_finite(document), separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None, as orjson writes them (for the rare json-module path)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def iso_millis(epoch_seconds: float) -> str:
    """Return a UTC timestamp with milliseconds and a `Z`, as Beats' JSON codec writes dates."""
    # isoformat truncates to milliseconds as `microsecond // 1000` does, in 3.7 us where strftime took 5.
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


# The random module's own generator: seeded from os.urandom, and again in every forked child (random's
# register_at_fork), so no two processes of the agent draw the same bits.
_random_bits = random.getrandbits


def new_event_id() -> str:
    """Return a time-ordered UUID (version 7 layout) so ids sort roughly by creation time."""
    millis = time.time_ns() // 1_000_000
    rand = _random_bits(80)  # no syscall (os.urandom was one per event); reseeded from urandom after a fork
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    digits = f"{value:032x}"  # str(uuid.UUID(int=value)) without its checks: one is made per event
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge nested `extra` into `base` in place (extra wins) and return `base`."""
    for key, value in extra.items():
        if not isinstance(value, (dict, Mapping)):  # plain values first: the common case, and the cheap check
            base[key] = value
        elif isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = deep_merge({}, value)
    return base


def put_dotted(target: dict[str, Any], dotted_name: str, value: Any) -> None:
    """Set `value` at a dotted field name ("user.group.id") in a nested mapping, creating the parents."""
    *parents, leaf = dotted_name.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def same_value(before: Any, after: Any) -> bool:
    """Compare two values of a field; lists compare as multisets (a reordered /etc/group or list of interfaces is
    no change), their items by canonical JSON."""
    if isinstance(before, list) and isinstance(after, list):
        def canonical(values: list[Any]) -> list[str]:
            return sorted(json.dumps(value, sort_keys=True, default=str) for value in values)
        return canonical(before) == canonical(after)
    return before == after


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The dotted names, of `names`, whose values differ between two flat {dotted name: value} mappings."""
    return [name for name in names if not same_value(before.get(name), after.get(name))]


def describe_changes(previous: Mapping[str, Any], changed: Sequence[str], withheld: Collection[str] = ()
                     ) -> dict[str, Any]:
    """Return `system.audit.changes`: the changed field names and, nested, their previous values.

    `previous` maps dotted names to old values; a name without a value before (None, "", []) is listed but
    has no previous value, and a `withheld` name (a secret, e.g. a password hash) is named, never given.
    """
    old_values: dict[str, Any] = {}
    for name in changed:
        value = previous.get(name)
        if name not in withheld and value not in (None, "", []):
            put_dotted(old_values, name, value)
    return {"fields": list(changed), "previous": old_values}


@dataclass(frozen=True, slots=True)
class Event:
    """One observation of a dataset: what happened (action), how ECS classifies it, and its fields.

    A dataset fills the first seven attributes. The collector runtime stamps `id` and `sequence` when it
    hands the event on; `to_document()` then adds the fields every event carries (agent, host, ecs, ...).
    """

    dataset: str
    action: str
    kind: str  # STATE ("state") or CHANGE ("event")
    category: tuple[str, ...]
    type: tuple[str, ...]
    message: str
    fields: Mapping[str, Any]  # the dataset's own ECS fields, nested: {"host": {...}, "system": {"audit": {...}}}
    timestamp: float = field(default_factory=time.time)
    id: str = ""
    sequence: int = 0

    def stamped(self, sequence: int) -> "Event":
        """Return this event with its unique `event.id` and its per-dataset `event.sequence`."""
        return Event(self.dataset, self.action, self.kind, self.category, self.type, self.message, self.fields,
                     self.timestamp, new_event_id(), sequence)  # dataclasses.replace costs 4x; one per event

    def to_document(self, common: Mapping[str, Any]) -> dict[str, Any]:
        """Return the ECS JSON document: `common` (agent, host, ecs, service) under the dataset's fields.

        As `deep_merge` of the two, but a nested mapping is copied only where both have the key (the host
        dataset's `host.*`): the document shares the rest with `common` and the event's fields, so it is to be
        read (encoded, routed), never changed in place. One is made per event, and `common` is large."""
        document: dict[str, Any] = {"@timestamp": iso_millis(self.timestamp), **common}
        for key, value in self.fields.items():
            if isinstance(value, Mapping):
                present = document.get(key)
                if isinstance(present, Mapping):
                    value = deep_merge(deep_merge({}, present), value)
                elif not isinstance(value, dict):
                    value = deep_merge({}, value)
            document[key] = value
        document["event"] = {
            **document.get("event", {}),
            "kind": self.kind,
            "category": list(self.category),
            "type": list(self.type),
            "action": self.action,
            "module": "system",
            "dataset": self.dataset,
            "id": self.id,
            "sequence": self.sequence,
        }
        document["message"] = self.message
        return document
