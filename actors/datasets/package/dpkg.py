"""Reading dpkg's database under hostfs: /var/lib/dpkg/status, its pending updates/ and the info/*.list mtimes."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from actors.datasets.package.records import DPKG, DatabaseRead, Package
from actors.hostfs import etc_files, procfs
from actors.hostfs.etc_files import FileSignature, LineProblem

LOG = logging.getLogger("hostaudit.package")

STATUS = "/var/lib/dpkg/status"
UPDATES = "/var/lib/dpkg/updates"  # records dpkg wrote since it last rewrote status (applied in name order)
INFO = "/var/lib/dpkg/info"  # <name>.list or <name>:<arch>.list, written when the package is unpacked
# Stat-gated by the dataset: a change of any of them (a directory's mtime moves when a file in it is created,
# renamed or removed) means the database is read again.
WATCHED = (STATUS, UPDATES, INFO)

# The third word of Status. In these states the package's files are not on disk: it is not reported.
ABSENT_STATES = frozenset({"not-installed", "config-files"})
KNOWN_STATES = ABSENT_STATES | {"half-installed", "unpacked", "half-configured", "triggers-awaited",
                                "triggers-pending", "installed"}
_SIZE_MULTIPLIERS = {"": 1, "k": 1, "m": 1024, "g": 1024 * 1024}  # Installed-Size is in KiB; M/G as Auditbeat
_UPDATE_NAME = re.compile(r"[0-9]+")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # deb822: printable ASCII but ':'
_BAD_LINE = re.compile(r"\n[^ \t\n#:][^:\n]*(?:\n|$)")  # not a continuation, a comment, empty or `Field: value`
_new_package = tuple.__new__


@dataclass(frozen=True, slots=True)
class Record:
    """One parsed stanza: the package's dpkg state and its fields (`installed` not filled in yet)."""

    state: str
    package: Package


@dataclass(frozen=True, slots=True)
class ParsedStatus:
    """The stanzas of a status (or updates/) file that parsed, and the problems of the others.

    `skipped` is True when a stanza was left out (its package is then unknown, not absent)."""

    records: tuple[Record, ...]
    problems: tuple[LineProblem, ...]
    skipped: bool


def parse_size(value: str) -> int | None:
    """Installed-Size (KiB, optionally with an M or G suffix, as Auditbeat reads it) in bytes; None if not one."""
    digits = value.rstrip("kKmMgG")
    suffix = value[len(digits):].lower()
    if not digits.isdigit() or not digits.isascii() or suffix not in _SIZE_MULTIPLIERS or len(digits) > 15:
        return None
    return int(digits) * _SIZE_MULTIPLIERS[suffix] * 1024


# One parsed stanza: (dpkg state, package) or (None, why it was skipped); a soft problem may come with a package.
Parsed = tuple[str | None, Package | str, str | None]


def _after(stanza: str, key: str, start: int) -> tuple[str, int]:
    """The first line of field `key` (with its newline and colon), searched from `start`, then from the top;
    ("", start) when the stanza has none."""
    at = stanza.find(key, start)
    if at < 0:
        at = stanza.find(key)
        if at < 0:
            return "", start
    begin = at + len(key)
    end = stanza.find("\n", begin)
    if end < 0:
        end = len(stanza)
    return stanza[begin:end], end - 1


def _fast(stanza: str) -> Parsed | None:
    """Parse a stanza as dpkg writes it (canonical field names, in dpkg's order: Package, Status, ...,
    Installed-Size, ..., Architecture, ..., Version, ..., Description, ..., Homepage); None when it is not in that
    form, for `_generic` to look at. Searching forward for each field touches each byte about once."""
    if not stanza.startswith("Package: ") or _BAD_LINE.search(stanza) is not None:
        return None
    end = stanza.find("\n", 9)
    name = stanza[9:end] if end >= 0 else ""
    if not name or " " in name:
        return None
    status, at = _after(stanza, "\nStatus: ", end - 1)
    size_text, at = _after(stanza, "\nInstalled-Size: ", at)
    architecture, at = _after(stanza, "\nArchitecture: ", at)
    version, at = _after(stanza, "\nVersion: ", at)
    description, at = _after(stanza, "\nDescription: ", at)
    reference, at = _after(stanza, "\nHomepage: ", at)
    if status.endswith(" installed") and version and size_text.isdigit() and size_text.isascii() \
            and status.count(" ") == 2 and not version.endswith(" "):
        # The common case, already known to be valid: build the record directly.
        return "installed", _new_package(Package, (DPKG, name, version, "", None, architecture.strip(), None,
                                                   int(size_text) * 1024, description.strip(), reference.strip(),
                                                   "")), None
    return _checked(name, status, version, architecture, size_text, description, reference)


def _checked(name: str, status: str, version: str, architecture: str, size_text: str, description: str,
             reference: str) -> Parsed:
    words = status.split()
    if len(words) != 3 or words[2] not in KNOWN_STATES:
        return None, f"of {name}: Status is not 'want flag state'", None
    state = words[2]
    version = version.strip()
    if not version and state not in ABSENT_STATES:
        return None, f"of {name}: no Version", None
    size_text = size_text.strip()
    size = parse_size(size_text) if size_text else None
    soft = f"of {name}: Installed-Size is not a number of KiB" if size is None and size_text else None
    package = _new_package(Package, (DPKG, name, version, "", None, architecture.strip(), None, size,
                                     description.strip(), reference.strip(), ""))
    return state, package, soft


def _generic(stanza: str) -> Parsed:
    """Parse any well-formed stanza: field names case-insensitive, any order, every line checked."""
    fields: dict[str, str] = {}
    for line in stanza.split("\n"):
        if not line or line[0] in " \t#":
            continue  # a continuation line (only the first line of a value is reported) or a comment
        name, colon, value = line.partition(":")
        if not colon:
            return None, "with a line without ':' (not 'Field: value')", None
        if _FIELD_NAME.fullmatch(name) is None:
            return None, "with a field name that is not printable ASCII", None
        fields.setdefault(name.lower(), value.strip())
    name = fields.get("package", "")
    if not name:
        return None, "without a Package field", None
    if any(character.isspace() for character in name):
        return None, "whose Package field is not one name", None
    return _checked(name, fields.get("status", ""), fields.get("version", ""), fields.get("architecture", ""),
                    fields.get("installed-size", ""), fields.get("description", ""), fields.get("homepage", ""))


class StanzaCache:
    """The parse of each stanza text seen in the last read: a database re-read after one package changed parses
    only the stanzas that changed."""

    def __init__(self) -> None:
        self._parsed: dict[str, Parsed] = {}

    def parse(self, data: bytes) -> ParsedStatus:
        """Parse the stanzas of dpkg's status file (or one updates/ file). Never raises.

        A stanza is skipped, as a problem naming its first line, when it has a line that is not `Field: value`,
        no Package, no or a malformed Status, or no Version while installed. A file that does not end with an
        empty line ends inside a stanza (it was cut while being written): that last stanza is skipped too.
        """
        text = data.decode("utf-8", "replace")
        stanzas = text.split("\n\n")
        cut = not text.endswith("\n\n") and bool(text.strip())
        previous, parsed = self._parsed, {}
        records: list[Record] = []
        problems: list[tuple[int, str]] = []  # (stanza index, reason)
        skipped = False
        last = len(stanzas) - 1
        for index, stanza in enumerate(stanzas):
            result = previous.get(stanza) or parsed.get(stanza)
            if result is None:
                if not stanza.strip():
                    continue
                result = _fast(stanza) or _generic(stanza.strip("\n"))
            if cut and index == last:
                result = None, "where the file ends (it was being written?)", None
            else:
                parsed[stanza] = result
            state, package, soft = result
            if state is None:
                skipped = True
                problems.append((index, f"stanza {package}"))
                continue
            records.append(Record(state, package))  # type: ignore[arg-type]
            if soft is not None:
                problems.append((index, soft))
        self._parsed = parsed
        return ParsedStatus(tuple(records), _numbered(stanzas, problems), skipped)


def _numbered(stanzas: list[str], problems: list[tuple[int, str]]) -> tuple[LineProblem, ...]:
    """Problems with the line number where their stanza starts (counted only when there are problems)."""
    numbered: list[LineProblem] = []
    line, index = 1, 0
    for wanted, reason in problems:
        while index < wanted:
            line += stanzas[index].count("\n") + 2
            index += 1
        numbered.append(LineProblem(line + len(stanzas[wanted]) - len(stanzas[wanted].lstrip("\n")), reason))
    return tuple(numbered)


def _describe(path: Path, problems: tuple[LineProblem, ...]) -> str:
    shown = problems[:etc_files.MAX_LISTED_PROBLEMS]
    listed = "; ".join(f"line {problem.line}: {problem.reason}" for problem in shown)
    more = len(problems) - len(shown)
    return f"{path}: {listed}{f'; and {more} more' if more > 0 else ''}"


def _update_files(updates: Path) -> list[Path]:
    try:
        names = os.listdir(updates)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise procfs.Unreadable(updates, error) from error
    return [updates / name for name in sorted(names) if _UPDATE_NAME.fullmatch(name)]


class DpkgReader:
    """Reads dpkg's installed packages under `hostfs`, re-parsing only the stanzas that changed since last time."""

    name = DPKG
    watched = WATCHED
    consistent = False  # a file read while it is rewritten in place can be cut anywhere

    def __init__(self, hostfs: Path) -> None:
        self.hostfs = hostfs
        self.status_path = procfs.host_path(hostfs, STATUS)
        self.updates_path = procfs.host_path(hostfs, UPDATES)
        self.info_path = procfs.host_path(hostfs, INFO)
        self._stanzas = StanzaCache()
        self._installed: dict[tuple[str, str], int | None] = {}
        self._info_signature: FileSignature | None = None

    def read(self) -> DatabaseRead:
        """Read the installed packages from the status file and pending updates. Never raises."""
        try:
            content = etc_files.read_file(self.status_path)
            if content is None:
                return DatabaseRead((), exists=False)
            parsed = [(self.status_path, self._stanzas.parse(content.data),
                       len(content.data) > etc_files.MAX_FILE_BYTES)]
            for update in _update_files(self.updates_path):
                loaded = etc_files.read_file(update)
                if loaded is not None:  # one dpkg merged and removed meanwhile is in status now
                    parsed.append((update, StanzaCache().parse(loaded.data), False))
        except procfs.Unreadable as error:
            return DatabaseRead(None, complete=False, problem=f"{error}; the dpkg packages are kept as last seen")
        by_slot: dict[tuple[str, str], Record] = {}
        problems: list[str] = []
        complete = True
        for path, status, too_large in parsed:
            for record in status.records:
                by_slot[(record.package.name, record.package.architecture)] = record  # updates/ win
            if status.problems:
                problems.append(_describe(path, status.problems))
            if too_large:
                problems.append(f"{path}: larger than {etc_files.MAX_FILE_BYTES} bytes, the rest is not read")
            complete = complete and not status.skipped and not too_large
        packages = self._with_install_times([record.package for record in by_slot.values()
                                             if record.state not in ABSENT_STATES])
        problem = None
        if problems:
            consequence = ("the packages of the skipped stanzas are kept as last seen" if not complete
                           else "those values are left out")
            problem = f"{'; '.join(problems)}; {consequence}"
        return DatabaseRead(packages, complete, problem)

    def _with_install_times(self, packages: list[Package]) -> tuple[Package, ...]:
        """Fill in `installed` from each package's file list mtime. The lists are stat'ed again only when the
        info directory changed (a reinstall writes a new list: the directory's mtime moves)."""
        try:
            signature = etc_files.stat_signature(self.info_path)
        except procfs.Unreadable:
            signature = None
        known = self._installed if signature is not None and signature == self._info_signature else {}
        info = str(self.info_path)
        installed: dict[tuple[str, str], int | None] = {}
        result = []
        for package in packages:
            slot = (package[1], package[5])
            when = known.get(slot, -1)
            if when == -1:
                when = _list_mtime(info, package[1], package[5])
            installed[slot] = when
            result.append(_new_package(Package, (*package[:6], when, *package[7:])))
        self._installed, self._info_signature = installed, signature
        return tuple(result)


def _list_mtime(info: str, name: str, architecture: str) -> int | None:
    """The mtime of a package's file list (info/<name>.list, or <name>:<arch>.list for Multi-Arch: same)."""
    for list_name in (name, f"{name}:{architecture}"):
        try:
            return os.stat(f"{info}/{list_name}.list").st_mtime_ns // 1_000_000_000
        except OSError:
            continue
    return None
