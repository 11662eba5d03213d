"""What an OSError from reading the host means: the thing vanished, access was denied, or another failure."""

from __future__ import annotations

import errno
import enum


class Outcome(enum.Enum):
    """The named outcome of a failed read, as psutil's _pslinux tells NoSuchProcess from AccessDenied."""

    VANISHED = "vanished"  # not there, or gone while we looked (a process exited between listdir and read)
    DENIED = "denied"  # not ours to read: needs more privileges
    OTHER = "other"  # EIO, EINVAL (not a link), EISDIR, ...: the thing is there but cannot be read


_OUTCOMES: dict[int, Outcome] = {
    errno.ENOENT: Outcome.VANISHED,
    errno.ENOTDIR: Outcome.VANISHED,  # /proc/PID/... after PID's directory went away, or a file in its place
    errno.ESRCH: Outcome.VANISHED,  # /proc/PID/... of a process that exited while the file was open
    errno.EACCES: Outcome.DENIED,
    errno.EPERM: Outcome.DENIED,
}


def outcome(error: OSError) -> Outcome:
    """Name what `error` means to a reader of the host (an OSError without errno is OTHER)."""
    return _OUTCOMES.get(error.errno, Outcome.OTHER) if error.errno is not None else Outcome.OTHER


def vanished(error: OSError) -> bool:
    """True when the file or process is not there (any more)."""
    return outcome(error) is Outcome.VANISHED


def denied(error: OSError) -> bool:
    """True when reading needs privileges we lack (EACCES, EPERM)."""
    return outcome(error) is Outcome.DENIED
