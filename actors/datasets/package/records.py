"""The package record every database reader returns, and the outcome of reading one package database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

# `type` of each database's packages (ECS package.type).
DPKG = "dpkg"
RPM = "rpm"
APK = "apk"


class Package(NamedTuple):
    """One installed package as a database records it. Empty strings and None mean "not recorded".

    A tuple (cheap to build by the thousand, and a JSON array in the persisted snapshot).
    """

    type: str  # dpkg, rpm or apk
    name: str
    version: str
    release: str = ""  # rpm only (dpkg and apk keep the revision inside `version`)
    epoch: int | None = None  # rpm only
    architecture: str = ""
    installed: int | None = None  # install time, epoch seconds (dpkg: its file list's mtime; rpm: INSTALLTIME)
    size: int | None = None  # installed size in bytes
    description: str = ""  # the one-line summary
    reference: str = ""  # the home page
    license: str = ""

    @property
    def slot(self) -> tuple[str, str]:
        """What one installed instance occupies: (name, architecture). dpkg and apk hold one package per slot;
        rpm may hold several versions (kernels) in one."""
        return self.name, self.architecture

    @classmethod
    def from_json(cls, record: Any) -> "Package":
        """Rebuild a package from its JSON array; ValueError when it is not one."""
        if isinstance(record, Package):
            return record
        if not isinstance(record, (list, tuple)) or len(record) != len(cls._fields):
            raise ValueError(f"not a package record ({type(record).__name__} of {len(record) if isinstance(record, (list, tuple)) else 0})")
        for name, value in zip(cls._fields, record):
            kind = int if name in _INTEGERS else str
            if (value is None and name in _INTEGERS) or (isinstance(value, kind) and not isinstance(value, bool)):
                continue
            raise ValueError(f"not a package record ({name} is a {type(value).__name__})")
        if not record[0] or not record[1]:
            raise ValueError("not a package record (no type or name)")
        return tuple.__new__(cls, record)


_INTEGERS = frozenset({"epoch", "installed", "size"})


@dataclass(frozen=True)
class DatabaseRead:
    """What reading one database gave.

    `packages` is None when the database could not be read at all (the last known packages stand). `complete`
    is False when some packages may be missing from `packages` (a stanza that did not parse, a truncated file):
    a package missing from an incomplete read is kept as last seen, never reported removed. `problem` is one
    line naming the file and what is wrong, for a warning.
    """

    packages: tuple[Package, ...] | None
    complete: bool = True
    problem: str | None = None
    exists: bool = True  # False when the database's file does not exist on the host
