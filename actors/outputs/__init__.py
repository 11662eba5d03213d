"""The output contract (publish a batch of encoded events, durably) and the factory for the configured one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence


class OutputError(Exception):
    """The output could not take the batch now; the producer keeps it spooled and retries."""


Rejection = tuple[int, str]  # (index of an event in the batch, why the output refuses it for good)


class Outgoing(Protocol):
    """One event to publish: its encoded ECS document, and the routing values recorded beside it when it was
    spooled (see actors.outputs.routing; None when none were recorded). A spooled record is one."""

    @property
    def payload(self) -> bytes: ...

    @property
    def routing(self) -> Mapping[str, str | None] | None: ...


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An Outgoing event that was not read from the spool (tests, tools)."""

    payload: bytes
    routing: Mapping[str, str | None] | None = None


class Output(Protocol):
    """Writes encoded ECS events somewhere. Knows nothing of datasets.

    `publish` returns only when every event of the batch is durably accepted (written and flushed, or
    acknowledged by the broker) or refused for good: it returns the refused ones (an event that can never
    be routed, a topic the broker rejects), which the producer keeps in the dead-letter file. On a failure
    that may pass (the broker is down, a timeout) it raises OutputError and the whole batch is sent again.
    """

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]: ...

    def close(self) -> None: ...


def create_output(kind: str, options: Mapping[str, Any]) -> Output:
    """Construct the enabled output (`console`, `file` or `kafka`) from its settings."""
    if kind == "console":
        from actors.outputs.console import ConsoleOutput
        return ConsoleOutput(options)
    if kind == "file":
        from actors.outputs.file import FileOutput
        return FileOutput(options)
    if kind == "kafka":
        from actors.outputs.kafka import KafkaOutput
        return KafkaOutput(options)
    raise ValueError(f"unknown output {kind!r}")
