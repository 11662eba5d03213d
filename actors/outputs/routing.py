"""Routing: Beats format strings, which event fields the output routes by, and their recorded values."""

from __future__ import annotations

import functools
import json
import math
import re
from collections import abc
from typing import Any, Mapping, Sequence

from actors.event import encode_document

_FIELD_REFERENCE = re.compile(r"%\{\[([^\]]+)\](?::([^}]*))?\}")

# What the collector records beside each encoded event for the fields the output routes by: the text a format
# string renders for the field (`str()` of its JSON value), or None when the event lacks the field (or it is
# null). The spool stores them; the output renders from them without parsing the event.
RoutingValues = Mapping[str, str | None]


class Unrecorded(LookupError):
    """The routing values of an event have no entry for a field a format string needs (the event was spooled
    before the output named that field, or by a version that recorded no values): route it from its payload."""


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
        # The dotted field names the template references (with or without a default).
        self.fields = frozenset(field for _, field, _, _ in self._pieces)

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

    def render_values(self, values: RoutingValues) -> str:
        """The template expanded against recorded routing values: the same text as `render` of the event they
        were recorded from. KeyError(field) for a field the event lacks (no default); Unrecorded(field) when
        `values` has no entry for a field."""
        if not self._pieces:
            return self._tail
        out = []
        for literal, field, _, default in self._pieces:
            try:
                value = values[field]
            except KeyError:
                raise Unrecorded(field) from None
            if value is None:
                if default is None:
                    raise KeyError(field)
                value = default
            out.append(literal)
            out.append(value)
        out.append(self._tail)
        return "".join(out)


@functools.lru_cache(maxsize=64)
def compile_format(template: str) -> FormatString:
    return FormatString(template)


def render(template: str, document: Mapping[str, Any]) -> str:
    """Expand Beats format references `%{[field.path]}` and `%{[field.path]:default}` against an event."""
    return compile_format(template).render(document)


def routing_fields(output_type: str, options: Mapping[str, Any]) -> frozenset[str]:
    """The dotted event fields the configured output routes by, computed once from its settings: for Kafka the
    fields `topic` and `key` reference and the `partition.hash.hash` fields; none for the other outputs."""
    if output_type != "kafka":
        return frozenset()
    fields = compile_format(str(options.get("topic", "hostaudit"))).fields
    if options.get("key"):
        fields |= compile_format(str(options["key"])).fields
    return fields | frozenset(hash_fields(options))


def hash_fields(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The `output.kafka.partition.hash.hash` fields, in order (empty for another partitioner)."""
    partition = options.get("partition") or {}
    return tuple(str(field) for field in (partition.get("hash") or {}).get("hash") or ())


def routing_text(value: Any) -> str | None:
    """The text a format string renders for a field of an event document, exactly as it would from the event
    encoded and parsed again (`str()` of its JSON value); None for a missing or null field."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        return value  # a lone surrogate is stored as '?', as the encoded event has it
    if kind is int or kind is bool:
        return str(value)  # JSON gives back the same value
    if kind is float:
        return str(value) if math.isfinite(value) else None  # the encoding writes NaN and infinities as null
    # Lists, objects, subclasses: through the collector's encoding (tuples become lists, surrogates '?')
    return str(json.loads(encode_document(value)))


def routing_values(document: Mapping[str, Any], fields: frozenset[str]) -> dict[str, str | None]:
    """The routing values of an event document (string keys, as every event has) for `fields`."""
    return {field: routing_text(lookup(document, field)) for field in fields}
