"""Event ids: UUID version 7, drawn without a syscall, and distinct across the agent's forked processes."""

from __future__ import annotations

import os
import uuid

from actors.event import new_event_id


def test_event_ids_are_uuid7_and_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    first = uuid.UUID(new_event_id())
    assert first.version == 7 and first.variant == uuid.RFC_4122
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child's next id, drawn from the generator it inherited (reseeded at the fork)
        os.write(writing, new_event_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    childs, parents = os.read(reading, 64).decode(), new_event_id()
    os.close(reading)
    os.close(writing)
    assert childs[14:] != parents[14:]  # without the reseed both would be the parent's next draw
    assert len({new_event_id() for _ in range(10_000)}) == 10_000
