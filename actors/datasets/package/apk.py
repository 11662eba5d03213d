"""Reading Alpine's apk database under hostfs: /lib/apk/db/installed (`K:value` lines, a blank line per package)."""

from __future__ import annotations

from pathlib import Path

from actors.datasets.package.records import APK, DatabaseRead, Package
from actors.hostfs import etc_files, procfs

INSTALLED = "/lib/apk/db/installed"
WATCHED = (INSTALLED,)
# The keys reported: P name, V version, A architecture, I installed size (bytes), T description, U url, L license.
# apk records no install time.
REPORTED_KEYS = frozenset("PVAITUL")


def _package(stanza: str) -> tuple[Package | None, str | None]:
    """The package of one stanza, or None and why it cannot be used."""
    fields: dict[str, str] = {}
    for line in stanza.split("\n"):
        if not line:
            continue
        if len(line) < 2 or line[1] != ":" or not line[0].isascii() or not line[0].isalpha():
            return None, "a line that is not 'K:value'"
        if line[0] in REPORTED_KEYS:
            fields.setdefault(line[0], line[2:])
    name, version = fields.get("P", ""), fields.get("V", "")
    if not name:
        return None, "no P: (name)"
    if not version:
        return None, f"{name} has no V: (version)"
    size_text = fields.get("I", "")
    size = int(size_text) if size_text.isascii() and size_text.isdigit() else None
    return Package(type=APK, name=name, version=version, architecture=fields.get("A", ""), size=size,
                   description=fields.get("T", ""), reference=fields.get("U", ""), license=fields.get("L", "")), None


def parse_installed(data: bytes) -> tuple[list[Package], list[str]]:
    """The packages of an apk `installed` file and the problems of the stanzas skipped. Never raises.

    A file that does not end with an empty line (apk writes one after every package) was cut while being written:
    its last stanza is skipped.
    """
    text = data.decode("utf-8", "replace")
    stanzas = text.split("\n\n")
    cut = bool(text.strip()) and not text.endswith("\n\n")
    packages: list[Package] = []
    problems: list[str] = []
    line = 1
    for index, stanza in enumerate(stanzas):
        start, line = line + len(stanza) - len(stanza.lstrip("\n")), line + stanza.count("\n") + 2
        if not stanza.strip():
            continue
        if cut and index == len(stanzas) - 1:
            problems.append(f"line {start}: stanza where the file ends (it was being written?)")
            continue
        package, problem = _package(stanza.strip("\n"))
        if package is None:
            problems.append(f"line {start}: stanza with {problem}")
        else:
            packages.append(package)
    return packages, problems


class ApkReader:
    """Reads apk's installed packages under `hostfs`."""

    name = APK
    watched = WATCHED
    consistent = False  # a file read while it is rewritten in place can be cut anywhere

    def __init__(self, hostfs: Path) -> None:
        self.path = procfs.host_path(hostfs, INSTALLED)

    def read(self) -> DatabaseRead:
        """Read the installed file. Never raises."""
        try:
            content = etc_files.read_file(self.path)
        except procfs.Unreadable as error:
            return DatabaseRead(None, complete=False, problem=f"{error}; the apk packages are kept as last seen")
        if content is None:
            return DatabaseRead((), exists=False)
        packages, problems = parse_installed(content.data)
        problem = None
        if problems:
            listed = "; ".join(problems[:etc_files.MAX_LISTED_PROBLEMS])
            more = len(problems) - etc_files.MAX_LISTED_PROBLEMS
            problem = (f"{self.path}: {listed}{f'; and {more} more' if more > 0 else ''}; the packages of the "
                       "skipped stanzas are kept as last seen")
        return DatabaseRead(tuple(packages), complete=not problems, problem=problem)
