"""Reading dpkg's database under hostfs: /var/lib/dpkg/status, its pending updates/ and the info/*.list mtimes."""

from __future__ import annotations

import bisect
import logging
import os
import re
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

from actors.datasets.package.records import DPKG, DatabaseRead, Package
from actors.hostfs import etc_files, procfs
from actors.hostfs.etc_files import FileSignature, LineProblem

try:  # C speed-ups of the stanza scan and the list stats, built by setup.py where a C compiler is present
    from actors.datasets.package import _dpkg_native
except ImportError:  # the pure-Python path below gives the same results, at about three times the CPU
    _dpkg_native = None

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
_new_tuple = tuple.__new__  # a NamedTuple (Package, Record) from its values, without its __new__'s keyword handling


def _then(field: str, value: str = ".*") -> str:
    """Valid lines, then the first line of `field` (captured `value`); committed once found (no backtracking).
    A first line of `field` whose value does not match fails the match (the line-by-line path reads that one)."""
    return rf"(?>(?:(?!{field}: ){_VALID_LINE})*?{field}: ({value})\n)"


# A line of a well-formed stanza: a continuation or comment, or `Field: value` (the field name printable ASCII).
_VALID_LINE = r"(?:[ \t#]|[!-9;-~]+:).*\n"
# One whole stanza as dpkg writes it for an installed package, up to and with its blank line: the fields it
# needs in dpkg's order (each the first of its name after the one before), every line valid. A stanza this does
# not match is parsed by `_fast` or `_generic`, which give the same result for a stanza this does match.
# _dpkg_native.c's scan_installed takes the same stanzas.
_INSTALLED_STANZA = re.compile(
    r"Package: ([^ \n]+)\n"
    + _then("Status", r"[^ \n]+ [^ \n]+ installed")
    + _then("Installed-Size", "[0-9]+")
    + _then("Architecture")
    + _then("Version", r"[^ \n](?:.*[^ \n])?")
    + _then("Description")
    + rf"(?:{_then('Homepage')})?"
    + rf"(?>(?:{_VALID_LINE})*)\n")


class Record(NamedTuple):
    """One parsed stanza: the package's dpkg state and its fields (`installed` not filled in yet)."""

    state: str
    package: Package
    arch_qualified: bool = False  # Multi-Arch: same, so its file list is <name>:<arch>.list (a hint: both are tried)


@dataclass(frozen=True, slots=True)
class ParsedStatus:
    """The stanzas of a status (or updates/) file that parsed, and the problems of the others.

    `skipped` is True when a stanza was left out (its package is then unknown, not absent). `text` is what was
    parsed and `spans` where each record's stanza starts and ends in it (for the next parse to reuse)."""

    records: tuple[Record, ...]
    problems: tuple[LineProblem, ...]
    skipped: bool
    text: str = ""
    spans: tuple[tuple[int, int], ...] = ()


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
            and status.count(" ") == 2 and not version.endswith(" ") \
            and not version.startswith(" "):
        # The common case, already known to be valid: build the record directly.
        return "installed", _new_tuple(Package, (DPKG, name, version, "", None, architecture.strip(), None,
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
    package = _new_tuple(Package, (DPKG, name, version, "", None, architecture.strip(), None, size,
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


def parse_status(data: bytes, previous: ParsedStatus | None = None) -> ParsedStatus:
    """Parse the stanzas of dpkg's status file (or one updates/ file). Never raises.

    A stanza is skipped, as a problem naming its first line, when it has a line that is not `Field: value`,
    no Package, no or a malformed Status, or no Version while installed. A file that does not end with an
    empty line ends inside a stanza (it was cut while being written): that last stanza is skipped too.

    With `previous` (the parse of the file before it changed), the stanzas in the text both share at the start
    and at the end are taken from it: dpkg rewrites the whole file when one package changes.
    """
    text = data.decode("utf-8", "replace")
    if previous is not None and previous.text and not previous.problems and text.endswith("\n\n"):
        return _parse_changed(text, previous)
    cut = not text.endswith("\n\n") and bool(text.strip())
    records, spans, problems, skipped = _parse_span(text, 0, len(text), cut)
    return ParsedStatus(tuple(records), _numbered(text, problems), skipped, text, tuple(spans))


def _parse_changed(text: str, previous: ParsedStatus) -> ParsedStatus:
    """Parse `text` reusing the records of `previous` whose stanzas lie in the text both share at either end."""
    old, spans = previous.text, previous.spans
    prefix = _common_prefix(text, old)
    suffix = _common_suffix(text, old, min(len(text), len(old)) - prefix)
    ends = [end for _, end in spans]
    head = bisect.bisect_right(ends, prefix)  # records[:head] end inside the shared start
    # records[tail:] start, with the empty line before them, inside the shared end
    tail = max(head, bisect.bisect_left([start for start, _ in spans], len(old) - suffix + 2))
    shift = len(text) - len(old)
    begin = ends[head - 1] if head else 0
    stop = spans[tail][0] + shift if tail < len(spans) else len(text)
    records, middle, problems, skipped = _parse_span(text, begin, stop, cut=False)
    moved = [(start + shift, end + shift) for start, end in spans[tail:]]
    return ParsedStatus((*previous.records[:head], *records, *previous.records[tail:]), _numbered(text, problems),
                        skipped, text, (*spans[:head], *middle, *moved))


_CHUNK = 65536
_MULTI_ARCH_SAME = "\nMulti-Arch: same\n"


def _common_prefix(one: str, other: str) -> int:
    """How many characters `one` and `other` share at their start (compared a chunk at a time, in C)."""
    limit = min(len(one), len(other))
    done = 0
    while done < limit and one[done:done + _CHUNK] == other[done:done + _CHUNK]:
        done += _CHUNK
    if done >= limit:
        return limit
    low, high = done, min(done + _CHUNK, limit)  # one[done:low] == other[done:low]; they differ before high
    while low < high:
        middle = (low + high + 1) // 2
        if one[done:middle] == other[done:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(one: str, other: str, limit: int) -> int:
    """How many characters (at most `limit`) `one` and `other` share at their end."""
    one_end, other_end, done = len(one), len(other), 0
    while done < limit:
        size = min(_CHUNK, limit - done)
        if one[one_end - done - size:one_end - done] != other[other_end - done - size:other_end - done]:
            break
        done += size
    else:
        return limit
    low, high = done, done + size  # the last `low` characters are shared; not the last `high`
    while low < high:
        middle = (low + high + 1) // 2
        if one[one_end - middle:one_end - done] == other[other_end - middle:other_end - done]:
            low = middle
        else:
            high = middle - 1
    return low


def _parse_span(text: str, position: int, stop: int, cut: bool
                ) -> tuple[list[Record], list[tuple[int, int]], list[tuple[int, str]], bool]:
    """Parse the stanzas of text[position:stop] (which starts a stanza and ends with an empty line, unless `cut`):
    the records, where each one's stanza is, the problems (offset of the stanza, reason) and whether one was
    skipped. Most stanzas are taken whole by `_scan_installed` (C speed); the others go line by line."""
    records: list[Record] = []
    spans: list[tuple[int, int]] = []
    problems: list[tuple[int, str]] = []
    skipped = False
    find = text.find
    while position < stop:
        position = _scan_installed(text, position, stop, records, spans)
        if position >= stop:
            break
        start, end = position, find("\n\n", position, stop)
        stanza = text[start:stop] if end < 0 else text[start:end]
        position = stop if end < 0 else end + 2
        if not stanza.strip():
            continue  # only white space: not a stanza
        if cut and end < 0:
            state, package, soft = None, "where the file ends (it was being written?)", None
        else:
            state, package, soft = _fast(stanza) or _generic(stanza.strip("\n"))
        if state is None:
            skipped = True
            problems.append((start, f"stanza {package}"))
            continue
        records.append(_new_tuple(Record, (state, package, find(_MULTI_ARCH_SAME, start, position) >= 0)))
        spans.append((start, position))
        if soft is not None:
            problems.append((start, soft))
    return records, spans, problems, skipped


def _scan_installed(text: str, position: int, stop: int, records: list[Record], spans: list[tuple[int, int]]
                    ) -> int:
    """Append the records (and spans) of the stanzas from `position` on that `_INSTALLED_STANZA` takes whole,
    skipping empty lines between them; return where it stopped: `stop`, or a stanza for the line-by-line path."""
    if _dpkg_native is not None:
        return _dpkg_native.scan_installed(text, position, stop, records, spans, Record, Package)
    match_installed, find = _INSTALLED_STANZA.match, text.find
    while position < stop:
        if text[position] == "\n":
            position += 1  # an extra empty line between stanzas
            continue
        matched = match_installed(text, position, stop)
        if matched is None:
            break
        end = matched.end()
        name, _, size, architecture, version, description, reference = matched.groups()
        if reference is None and find("\nHomepage: ", position, end) >= 0:
            break  # a Homepage before the Description: the line-by-line path finds it
        records.append(_new_tuple(Record, ("installed", _new_tuple(Package, (
            DPKG, name, version, "", None, architecture.strip(), None, int(size) * 1024,
            description.strip(), reference.strip() if reference else "", "")),
            find(_MULTI_ARCH_SAME, position, end) >= 0)))
        spans.append((position, end))
        position = end
    return position


def _numbered(text: str, problems: list[tuple[int, str]]) -> tuple[LineProblem, ...]:
    """Problems (in the order of their offsets) with the number of the line their stanza starts on."""
    numbered: list[LineProblem] = []
    line, counted = 1, 0
    for offset, reason in problems:
        line += text.count("\n", counted, offset)
        counted = offset
        numbered.append(LineProblem(line, reason))
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
        if _dpkg_native is None:
            LOG.info("dpkg: the C speed-ups were not built (no C compiler at install?): reading on the "
                     "pure-Python path, about three times the CPU for a full read")
        self.hostfs = hostfs
        self.status_path = procfs.host_path(hostfs, STATUS)
        self.updates_path = procfs.host_path(hostfs, UPDATES)
        self.info_path = procfs.host_path(hostfs, INFO)
        self._installed: dict[tuple[str, str], int | None] = {}
        self._info_signature: FileSignature | None = None
        self._status: ParsedStatus | None = None  # the last parse of the status file

    def read(self) -> DatabaseRead:
        """Read the installed packages from the status file and pending updates. Never raises."""
        try:
            content = etc_files.read_file(self.status_path)
            if content is None:
                return DatabaseRead((), exists=False)
            self._status = parse_status(content.data, self._status)
            parsed = [(self.status_path, self._status, len(content.data) > etc_files.MAX_FILE_BYTES)]
            for update in _update_files(self.updates_path):
                loaded = etc_files.read_file(update)
                if loaded is not None:  # one dpkg merged and removed meanwhile is in status now
                    parsed.append((update, parse_status(loaded.data), False))
        except procfs.Unreadable as error:
            return DatabaseRead(None, complete=False, problem=f"{error}; the dpkg packages are kept as last seen")
        records: list[Record] = []
        problems: list[str] = []
        complete = True
        for path, status, too_large in parsed:
            records.extend(status.records)
            if status.problems:
                problems.append(_describe(path, status.problems))
            if too_large:
                problems.append(f"{path}: larger than {etc_files.MAX_FILE_BYTES} bytes, the rest is not read")
            complete = complete and not status.skipped and not too_large
        packages = self._installed_packages(records)
        problem = None
        if problems:
            consequence = ("the packages of the skipped stanzas are kept as last seen" if not complete
                           else "those values are left out")
            problem = f"{'; '.join(problems)}; {consequence}"
        return DatabaseRead(packages, complete, problem)

    def _installed_packages(self, records: list[Record]) -> tuple[Package, ...]:
        """The installed packages of `records` (status, then updates/), with `installed` from each one's file list
        mtime. The lists are stat'ed again only when the info directory changed (a reinstall writes a new list:
        the directory's mtime moves)."""
        try:
            signature = etc_files.stat_signature(self.info_path)
        except procfs.Unreadable:
            signature = None
        known = self._installed if signature is not None and signature == self._info_signature else {}
        info = _open_directory(self.info_path)
        try:
            packages, self._installed = _installed_packages(info, records, known)
        finally:
            if info is not None:
                os.close(info)
        self._info_signature = signature
        return tuple(packages)


def _installed_packages(info: int | None, records: list[Record], known: dict[tuple[str, str], int | None]
                        ) -> tuple[list[Package], dict[tuple[str, str], int | None]]:
    """Of `records`, the last of each (name, architecture) slot (updates/ win), in the order slots first appear,
    unless absent: its package with `installed` set (from `known`, else its list's mtime); and what each slot got."""
    if _dpkg_native is not None:
        return _dpkg_native.installed_packages(-1 if info is None else info, records, known, ABSENT_STATES)
    by_slot = {(record[1][1], record[1][5]): record for record in records}
    installed: dict[tuple[str, str], int | None] = {}
    packages = []
    for state, package, arch_qualified in by_slot.values():
        if state in ABSENT_STATES:
            continue
        slot = (package[1], package[5])
        when = known.get(slot, -1)
        if when == -1:
            when = _list_mtime(info, package[1], package[5], arch_qualified)
        installed[slot] = when
        packages.append(_new_tuple(Package, (*package[:6], when, *package[7:])))
    return packages, installed


def _open_directory(path: Path) -> int | None:
    """A descriptor of directory `path` (the lists are stat'ed relative to it: one path component each), or None."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _list_mtime(info: int | None, name: str, architecture: str, arch_qualified: bool) -> int | None:
    """The mtime of a package's file list (info/<name>.list, or <name>:<arch>.list for Multi-Arch: same)."""
    if info is None:
        return None
    names = (f"{name}.list", f"{name}:{architecture}.list")
    for list_name in reversed(names) if arch_qualified else names:
        try:
            return os.stat(list_name, dir_fd=info).st_mtime_ns // 1_000_000_000
        except (OSError, ValueError):  # ValueError: a NUL in the name
            continue
    return None
