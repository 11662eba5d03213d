"""Reading rpm's database under hostfs: the SQLite rpmdb.sqlite (stdlib sqlite3) and its header blobs, parsed here.

The older Berkeley DB (`Packages`) and NDB (`Packages.db`) formats are not read: a warning names the file and says
how to convert it (`rpmdb --rebuilddb` with rpm >= 4.16 and `%_db_backend sqlite`), and no rpm package is reported.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any
from urllib.parse import quote

from actors.datasets.package.records import RPM, DatabaseRead, Package
from actors.hostfs import procfs

# Where rpm keeps its database: /usr/lib/sysimage/rpm on current Fedora/openSUSE (/var/lib/rpm then being a
# symlink to it, which under hostfs cannot be followed safely), /var/lib/rpm elsewhere. The first that exists wins.
DIRECTORIES = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
SQLITE = "rpmdb.sqlite"
OLD_FORMATS = {"Packages": "Berkeley DB", "Packages.db": "NDB"}
# Stat-gated by the dataset. SQLite in WAL mode commits into the -wal file; the main file changes at checkpoints.
WATCHED = tuple(f"{directory}/{name}" for directory in DIRECTORIES
                for name in (SQLITE, SQLITE + "-wal", *OLD_FORMATS))
BUSY_TIMEOUT = 1.0  # seconds to wait for rpm's write lock before giving up until the next poll

# Header tags (rpmtag.h) and types (rpmTagType).
TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_SUMMARY = 1000, 1001, 1002, 1003, 1004
TAG_INSTALLTIME, TAG_SIZE, TAG_LICENSE, TAG_URL, TAG_ARCH, TAG_LONGSIZE = 1008, 1009, 1014, 1020, 1022, 5009
WANTED_TAGS = frozenset({TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_SUMMARY, TAG_INSTALLTIME, TAG_SIZE,
                         TAG_LICENSE, TAG_URL, TAG_ARCH, TAG_LONGSIZE})
TYPE_INT32, TYPE_INT64, TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING = 4, 5, 6, 8, 9
ENTRY = struct.Struct(">iIiI")  # tag, type, offset into the data store, count
MAX_INDEX_ENTRIES = 0xFFFF  # rpm's own limits (hdrchk)
MAX_DATA_BYTES = 256 << 20


class HeaderError(ValueError):
    """A header blob that is not a valid rpm header. The message says why."""


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if end < 0:
        raise HeaderError("a string runs past the end of the data")
    return data[offset:end].decode("utf-8", "replace")


def parse_header(blob: bytes) -> dict[int, Any]:
    """Return the wanted tags of an installed package's header blob (as rpmdb.sqlite stores it: index count and
    data length as big-endian int32, the index entries, then the data store). Raises HeaderError."""
    if len(blob) < 8:
        raise HeaderError("shorter than a header")
    count, length = struct.unpack_from(">II", blob)
    if count > MAX_INDEX_ENTRIES or length > MAX_DATA_BYTES:
        raise HeaderError(f"{count} index entries and {length} data bytes exceed rpm's limits")
    data_start = 8 + 16 * count
    if data_start + length > len(blob):
        raise HeaderError(f"{len(blob)} bytes cannot hold {count} index entries and {length} data bytes")
    data = blob[data_start:data_start + length]
    tags: dict[int, Any] = {}
    for tag, kind, offset, items in ENTRY.iter_unpack(blob[8:data_start]):
        if tag not in WANTED_TAGS:
            continue
        if offset < 0 or offset >= length or items < 1:
            raise HeaderError(f"tag {tag} points outside the data")
        if kind == TYPE_INT32:
            if offset + 4 > length:
                raise HeaderError(f"tag {tag} points outside the data")
            tags[tag] = struct.unpack_from(">I", data, offset)[0]
        elif kind == TYPE_INT64:
            if offset + 8 > length:
                raise HeaderError(f"tag {tag} points outside the data")
            tags[tag] = struct.unpack_from(">Q", data, offset)[0]
        elif kind in (TYPE_STRING, TYPE_I18NSTRING, TYPE_STRING_ARRAY):
            tags[tag] = _string(data, offset)  # an i18n string's first value is the C locale's
        else:
            raise HeaderError(f"tag {tag} has type {kind}, not the one rpm gives it")
    return tags


def package_of(tags: dict[int, Any]) -> Package:
    """The package a header describes; HeaderError when it has no name or version."""
    name, version = tags.get(TAG_NAME, ""), tags.get(TAG_VERSION, "")
    if not isinstance(name, str) or not name:
        raise HeaderError("no NAME")
    if not isinstance(version, str) or not version:
        raise HeaderError(f"{name} has no VERSION")
    size = tags.get(TAG_LONGSIZE, tags.get(TAG_SIZE))
    installed = tags.get(TAG_INSTALLTIME) or None
    return Package(type=RPM, name=name, version=version, release=_text(tags, TAG_RELEASE),
                   epoch=_integer(tags, TAG_EPOCH), architecture=_text(tags, TAG_ARCH),
                   installed=installed if isinstance(installed, int) else None,
                   size=size if isinstance(size, int) else None, description=_text(tags, TAG_SUMMARY),
                   reference=_text(tags, TAG_URL), license=_text(tags, TAG_LICENSE))


def _text(tags: dict[int, Any], tag: int) -> str:
    value = tags.get(tag, "")
    return value if isinstance(value, str) else ""


def _integer(tags: dict[int, Any], tag: int) -> int | None:
    value = tags.get(tag)
    return value if isinstance(value, int) else None


class RpmReader:
    """Reads rpm's installed packages from rpmdb.sqlite under `hostfs`, read-only."""

    name = RPM
    watched = WATCHED
    consistent = True  # one SQLite read transaction: never half of a write (reading creates -shm/-wal, as rpm -q does)

    def __init__(self, hostfs: Path) -> None:
        self.hostfs = hostfs

    def _directory(self) -> Path | None:
        for directory in DIRECTORIES:
            path = procfs.host_path(self.hostfs, directory)
            if path.is_dir() and not path.is_symlink():
                return path
        return None

    def read(self) -> DatabaseRead:
        """Read every header of rpmdb.sqlite. Never raises."""
        directory = self._directory()
        if directory is None:
            return DatabaseRead((), exists=False)
        database = directory / SQLITE
        if not database.exists():
            for name, kind in OLD_FORMATS.items():
                if (directory / name).exists():
                    return DatabaseRead(None, complete=False, problem=(
                        f"{directory / name} is an rpm database in the {kind} format, which hostaudit does not read; "
                        "convert it with `rpmdb --rebuilddb` (rpm >= 4.16, %_db_backend sqlite); no rpm package "
                        "is reported"))
            return DatabaseRead((), exists=False)
        try:
            rows = self._rows(database)
        except sqlite3.Error as error:
            return DatabaseRead(None, complete=False,
                                problem=f"{database}: cannot be read ({error}); the rpm packages are kept as last seen")
        packages: list[Package] = []
        problems: list[str] = []
        for number, blob in rows:
            try:
                packages.append(package_of(parse_header(bytes(blob) if blob is not None else b"")))
            except HeaderError as error:
                problems.append(f"header {number}: {error}")
        problem = None
        if problems:
            listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            problem = f"{database}: skipped {len(problems)} unreadable package headers ({listed}); those packages " \
                      "are kept as last seen"
        return DatabaseRead(tuple(packages), complete=not problems, problem=problem)

    @staticmethod
    def _rows(database: Path) -> list[tuple[int, bytes]]:
        """Every (hnum, blob) of the Packages table, read in one read-only transaction."""
        uri = f"file:{quote(str(database))}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            return connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
        finally:
            connection.close()
