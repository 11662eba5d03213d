"""The producer's doorbell: collectors ring it after each spool append; nothing a SIGKILL can wedge.

A `multiprocessing.Event` is a condition variable over a shared semaphore: a participant killed inside
`set()` or `wait()` leaves its lock held and every other process blocks for ever. The doorbell is instead
one Unix datagram socket in the abstract namespace (no file to clean up), bound by the producer:
- ringing is one non-blocking `sendto()`; if no producer is listening (it is being restarted) or its queue
  is full (it has been rung already), the ring is dropped, which is harmless: the producer re-reads every
  spool when it starts and polls at least every `wait()` timeout anyway;
- the kernel frees the name when the producer dies, however it dies, so its replacement binds it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import time
from pathlib import Path

log = logging.getLogger("hostaudit.doorbell")

_DRAIN_BYTES = 4096


def doorbell_name(path_data: Path) -> str:
    """The abstract socket name of the agent using `path_data` (one doorbell per agent)."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path_data))).hexdigest()[:24]
    return f"hostaudit-doorbell-{digest}"


class Bell:
    """The ringing side, one per collector process."""

    def __init__(self, name: str) -> None:
        self._address = "\0" + name
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    def ring(self) -> None:
        """Tell the producer that something was spooled; never blocks, never raises."""
        try:
            self._socket.sendto(b"!", self._address)
        except OSError:
            pass  # no producer bound (restarting) or already rung (queue full): it polls anyway

    def close(self) -> None:
        self._socket.close()


class Doorbell:
    """The listening side, in the producer. While its name is taken (a predecessor still exiting) it polls
    instead, and tries to bind again at most once a second."""

    REBIND_SECONDS = 1.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._socket: socket.socket | None = None
        self._bind_tried_at = 0.0
        self._warned = False
        self._bind()

    def _bind(self) -> None:
        self._bind_tried_at = time.monotonic()
        candidate = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            candidate.bind("\0" + self._name)
        except OSError as error:
            candidate.close()
            if not self._warned:
                self._warned = True
                log.warning("cannot bind the doorbell %s (%s); polling the spool until it is free", self._name,
                            error)
            return
        self._socket = candidate
        if self._warned:
            log.info("doorbell %s bound", self._name)

    def drain(self) -> None:
        """Forget the rings received so far (call before reading the spools)."""
        if self._socket is None:
            return
        try:
            while self._socket.recv(_DRAIN_BYTES):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wait(self, timeout: float) -> bool:
        """Wait until rung or `timeout` seconds passed; True if rung."""
        if self._socket is None and time.monotonic() - self._bind_tried_at >= self.REBIND_SECONDS:
            self._bind()
        if self._socket is None:  # rings are lost until bound: poll at least as often as it tries to bind
            time.sleep(min(timeout, self.REBIND_SECONDS))
            return False
        readable, _, _ = select.select([self._socket], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
