"""The one Event type that flows from a dataset to every output, and the ECS document it becomes."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any

ECS_VERSION = "9.4.0"

STATE = "state"
CHANGE = "event"


def iso_millis(epoch_seconds: float) -> str:
    """Return a UTC timestamp with milliseconds and a `Z`, as Beats' JSON codec writes dates."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_event_id() -> str:
    """Return a time-ordered UUID (version 7 layout) so ids sort roughly by creation time."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


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
    """Set `value` at a dotted field name in a nested document: put_dotted(d, "package.version", "1.0")."""
    *parents, leaf = dotted_name.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


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
        return replace(self, id=new_event_id(), sequence=sequence)

    def to_document(self, common: Mapping[str, Any]) -> dict[str, Any]:
        """Return the ECS JSON document: `common` (agent, host, ecs, service) under the dataset's fields."""
        document: dict[str, Any] = {"@timestamp": iso_millis(self.timestamp)}
        deep_merge(document, common)
        deep_merge(document, self.fields)
        event_fields = document.setdefault("event", {})
        event_fields.update(
            {
                "kind": self.kind,
                "category": list(self.category),
                "type": list(self.type),
                "action": self.action,
                "module": "system",
                "dataset": self.dataset,
                "id": self.id,
                "sequence": self.sequence,
            }
        )
        document["message"] = self.message
        return document
