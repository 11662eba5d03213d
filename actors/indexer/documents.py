"""Kafka records into bulk documents: the `create` action (index from the format string, `_id = event.id`) and
the source line, or the reason a record cannot be indexed (malformed JSON, no usable event.id)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from actors.indexer.bulk import action_line
from actors.outputs.kafka import FormatString

MAX_ID_BYTES = 512  # Elasticsearch's limit on `_id`


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Document:
    """One record ready for `_bulk`: its action line and its source line (one line of JSON, no newline)."""

    source: Source
    action: bytes
    body: bytes

    @property
    def size(self) -> int:
        return len(self.action) + len(self.body) + 1


@dataclass(frozen=True, slots=True)
class Refused:
    """A record that cannot be indexed as it is, and why: it goes to the dead-letter topic."""

    source: Source
    payload: bytes | None
    reason: str
    is_json: bool = True  # False: the payload is not JSON (kept as text in the dead letter)

    @property
    def size(self) -> int:
        return len(self.payload or b"")


class DocumentReader:
    """Turns record values into `Document`s, or `Refused` ones with a one-line reason."""

    def __init__(self, index: str) -> None:
        self.index = FormatString(index)
        self._actions: dict[str, bytes] = {}  # index name -> the action line's start, for the common names

    def read(self, source: Source, value: bytes | None) -> Document | Refused:
        if not value:
            return Refused(source, value, "empty message (no JSON document)", is_json=False)
        try:
            document: Any = json.loads(value)
        except UnicodeDecodeError as error:
            return Refused(source, value, f"malformed JSON: not UTF-8 text ({error.reason} at byte {error.start})",
                           is_json=False)
        except ValueError as error:
            return Refused(source, value, f"malformed JSON: {error}", is_json=False)
        if not isinstance(document, dict):
            return Refused(source, value, f"not a JSON object but a {type(document).__name__}")
        event = document.get("event")
        document_id = event.get("id") if isinstance(event, dict) else None
        if not isinstance(document_id, str) or not document_id.strip():
            return Refused(source, value, "no event.id (a non-empty string): the document id hostaudit indexes by")
        if len(document_id.encode()) > MAX_ID_BYTES:
            return Refused(source, value, f"event.id is longer than {MAX_ID_BYTES} bytes, the most a document id "
                                          "may have")
        try:
            index = self.index.render(document)
        except KeyError as missing:
            return Refused(source, value, f"no field {missing.args[0]} for output.elasticsearch.index "
                                          f"{self.index.template!r}")
        body = value
        if b"\n" in value or b"\r" in value:  # pretty-printed JSON: _bulk takes one line per document
            body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        return Document(source, self._action(index, document_id), body)

    def _action(self, index: str, document_id: str) -> bytes:
        start = self._actions.get(index)
        if start is None:
            start = action_line(index, "")[:-len(b'""}}\n')]  # up to b'..."_id":'
            if len(self._actions) < 1024:
                self._actions[index] = start
        return start + json.dumps(document_id).encode() + b"}}\n"
