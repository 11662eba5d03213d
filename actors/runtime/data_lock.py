"""One agent per `path.data`: an exclusive lock taken before anything else, naming its holder's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "hostaudit.lock"


class DataDirectoryLocked(Exception):
    """Another live hostaudit holds `path.data`."""


def lock_data_directory(path_data: Path) -> int:
    """Take the exclusive lock on `<path.data>/hostaudit.lock` and write our pid in it; return its descriptor.

    The lock is an `flock`, so the kernel releases it when this process dies however it dies: a stale lock
    file left by a killed agent never blocks the next start. Keep the descriptor open for the agent's life.
    """
    path_data.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = path_data / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DataDirectoryLocked(f"path.data {path_data} is in use by another hostaudit (pid {holder}); "
                                  f"stop it or give this one another -E path.data=...") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
