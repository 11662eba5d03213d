"""Reading files under the host root (`/proc`, `/etc`, ...), with OS errors mapped to a few clear outcomes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# The file is not there, or vanished while we looked (a process exited between listdir and read).
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESRCH})


class Unreadable(Exception):
    """A file exists (or may exist) but cannot be read: permission denied, I/O error, not a regular file."""

    def __init__(self, path: Path | str, error: OSError) -> None:
        self.path = Path(path)
        self.errno = error.errno
        self.reason = error.strerror or str(error)
        denied = self.errno in (errno.EACCES, errno.EPERM)
        hint = " (needs more privileges: run as root or grant read access)" if denied else ""
        super().__init__(f"cannot read {self.path}: {self.reason}{hint}")


def host_path(hostfs: Path, absolute: str) -> Path:
    """Return `absolute` (e.g. "/proc/stat") as seen under the host root `hostfs` (e.g. /hostfs/proc/stat)."""
    return hostfs / absolute.lstrip("/")


def read_bytes(path: Path | str) -> bytes | None:
    """Return the file's bytes, or None when it does not exist (ENOENT, ENOTDIR, ESRCH).

    Raises Unreadable, naming the path, for any other OS error (EACCES, EPERM, EIO, EISDIR, ...).
    """
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        if error.errno in _ABSENT:
            return None
        raise Unreadable(path, error) from error


def read_text(path: Path | str) -> str | None:
    """Return the file as text, or None when it does not exist; bytes that are not UTF-8 become U+FFFD.

    Raises Unreadable, naming the path, when the file cannot be read for any other reason.
    """
    content = read_bytes(path)
    return None if content is None else content.decode("utf-8", errors="replace")


def read_link(path: Path | str) -> str | None:
    """Return a symlink's target (e.g. /proc/<pid>/exe), or None when the link does not exist.

    Raises Unreadable, naming the path, when it cannot be read (EACCES on another user's process, EINVAL
    when the path is not a link, ...).
    """
    try:
        return os.readlink(path)
    except OSError as error:
        if error.errno in _ABSENT:
            return None
        raise Unreadable(path, error) from error
