"""The doorbell between collectors and the producer: no ringer or sleeper can wedge the other."""

from __future__ import annotations

import os
import signal
import time
import uuid

from actors.runtime.doorbell import Bell, Doorbell


def test_a_ring_wakes_the_waiter_and_drain_forgets_it() -> None:
    name = f"test-{uuid.uuid4().hex}"
    doorbell, bell = Doorbell(name), Bell(name)
    try:
        assert not doorbell.wait(0.01)
        bell.ring()
        assert doorbell.wait(1.0)
        doorbell.drain()
        assert not doorbell.wait(0.01)
    finally:
        doorbell.close()
        bell.close()


def test_ringing_never_blocks_with_no_listener_or_a_full_queue() -> None:
    name = f"test-{uuid.uuid4().hex}"
    bell = Bell(name)
    started = time.monotonic()
    for _ in range(2_000):
        bell.ring()  # nobody bound: dropped
    doorbell = Doorbell(name)
    for _ in range(20_000):
        bell.ring()  # far more than the socket queue holds: dropped, never blocks
    assert time.monotonic() - started < 10
    assert doorbell.wait(0.1)
    doorbell.close()
    bell.close()


def test_a_listener_killed_by_sigkill_frees_the_name_for_its_successor() -> None:
    name = f"test-{uuid.uuid4().hex}"
    pid = os.fork()
    if pid == 0:  # the doomed producer: binds and sleeps in wait()
        Doorbell(name).wait(60)
        os._exit(0)
    deadline = time.monotonic() + 5
    successor = Doorbell(name)  # the name is taken while the child lives: polls, binds again later
    while time.monotonic() < deadline and successor._socket is not None:
        successor.close()
        successor = Doorbell(name)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    bell = Bell(name)
    deadline = time.monotonic() + 5
    woken = False
    while not woken and time.monotonic() < deadline:
        bell.ring()
        woken = successor.wait(0.2)
    assert woken, "the successor bound the freed name and is woken by rings"
    successor.close()
    bell.close()
