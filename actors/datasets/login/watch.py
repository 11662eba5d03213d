"""The login dataset's stream: a cheap stat poll of the matched files that notifies within a poll interval
when any of them changed, appeared or went, or when the last read left records to read."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable

POLL_SECONDS = 0.25
FILES_CHANGED = "files_changed"  # the one kind of notification: read on now


class FilesWatch:
    """A Stream (actors.datasets): `read(timeout)` returns [FILES_CHANGED] when `look()` (the files' names,
    inodes, sizes and modification times) differs from the last look, or when `more` is set (the dataset
    stopped reading before the end: a backlog); [] when the timeout passes first. Looks every POLL_SECONDS."""

    def __init__(self, look: Callable[[], Hashable], more: threading.Event,
                 interval: float = POLL_SECONDS) -> None:
        self._look = look
        self._more = more
        self.interval = interval
        self._last: Hashable = None
        self._looked = False
        self._next_look = 0.0
        self._closed = threading.Event()

    def read(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed.is_set():
            if self._more.is_set():
                self._more.clear()
                return [FILES_CHANGED]
            now = time.monotonic()
            if now >= self._next_look:
                self._next_look = now + self.interval
                current = self._look()
                changed = not self._looked or current != self._last
                self._last, self._looked = current, True
                if changed:
                    return [FILES_CHANGED]
            wake = min(deadline, self._next_look)
            if wake <= now and now >= deadline:
                return []
            self._more.wait(max(0.0, wake - now))  # wakes at once when a backlog is signalled
            if time.monotonic() >= deadline and not self._more.is_set():
                return []
        return []

    def lost(self) -> int:
        return 0  # a stat poll loses nothing: the next read finds every record since the committed cursors

    def close(self) -> None:
        self._closed.set()
