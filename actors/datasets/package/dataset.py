"""The package dataset: installed packages from the dpkg, rpm and apk databases, their state and their changes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from actors.datasets import DatasetContext, dataset_options
from actors.datasets.package.apk import ApkReader
from actors.datasets.package.dpkg import DpkgReader
from actors.datasets.package.records import DatabaseRead, Package
from actors.datasets.package.rpmdb import RpmReader
from actors.ecs import EcsField
from actors.event import CHANGE, STATE, Event, changed_fields, describe_changes, iso_millis
from actors.hostfs import etc_files, procfs
from actors.hostfs.entity import package_entity_id
from actors.hostfs.etc_files import FileSignature

if TYPE_CHECKING:
    from actors.datasets.package.options import PackageOptions

DATASET = "package"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field).
FIELDS: frozenset[str] = frozenset({
    "package.name", "package.version", "package.architecture", "package.installed", "package.size",
    "package.description", "package.reference", "package.license", "package.type",
})
_KEYWORD = EcsField("keyword", array=False)
# Its own fields (Auditbeat's package/_meta/fields.yml plus the entity id), with their types.
AUDIT_FIELDS: Mapping[str, EcsField] = {
    **{f"system.audit.package.{key}": _KEYWORD
       for key in ("name", "version", "release", "epoch", "arch", "license", "summary", "url", "entity_id")},
    "system.audit.package.installtime": EcsField("date", array=False),
    "system.audit.package.size": EcsField("long", array=False),
}
LOG = logging.getLogger("hostaudit.package")

SNAPSHOT_FORMAT = 1
# How long, at most, the changes of a dpkg or apk database that keeps changing (a long upgrade) wait for its
# files to be still for etc_files.RACY_WINDOW_NS (2 s) before they are reported anyway (removals still wait).
SETTLE_LIMIT = 10.0  # seconds
READERS = {"dpkg": DpkgReader, "rpm": RpmReader, "apk": ApkReader}


# ---------------------------------------------------------------------------------------------------------
# Event fields and messages
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PackageAction:
    """One `event.action` of the dataset: its ECS kind and type and the verb of its message."""

    name: str
    kind: str
    type: str
    verb: str


EXISTING_PACKAGE = PackageAction("existing_package", STATE, "info", "is already installed")
PACKAGE_INSTALLED = PackageAction("package_installed", CHANGE, "installation", "installed")
PACKAGE_REMOVED = PackageAction("package_removed", CHANGE, "deletion", "removed")
PACKAGE_UPDATED = PackageAction("package_updated", CHANGE, "change", "updated")

# What a package_updated event compares: (field name in the event, Package attribute).
COMPARED_FIELDS = (
    ("package.version", "version"),
    ("system.audit.package.release", "release"),
    ("system.audit.package.epoch", "epoch"),
    ("package.architecture", "architecture"),
    ("package.size", "size"),
    ("package.installed", "installed"),
    ("package.description", "description"),
    ("package.reference", "reference"),
    ("package.license", "license"),
)


def package_message(package: Package, action: PackageAction) -> str:
    """Auditbeat's message: "Package <name> (<version>) <verb>"."""
    return f"Package {package.name} ({package.version}) {action.verb}"


def _field_value(package: Package, attribute: str) -> Any:
    value = getattr(package, attribute)
    if attribute == "installed" and value is not None:
        return iso_millis(value)
    return value


def package_fields(package: Package, host_id: str) -> dict[str, Any]:
    """The event's own fields: ECS `package.*` and Auditbeat's `system.audit.package.*` (empty values left out).

    Auditbeat sets `package.architecture` to the license (a bug); here it is the architecture."""
    installed = iso_millis(package.installed) if package.installed is not None else None
    ecs = {"name": package.name, "version": package.version, "architecture": package.architecture,
           "installed": installed, "size": package.size, "description": package.description,
           "reference": package.reference, "license": package.license, "type": package.type}
    audit = {"name": package.name, "version": package.version, "release": package.release,
             "epoch": package.epoch, "arch": package.architecture, "license": package.license,
             "installtime": installed, "size": package.size, "summary": package.description,
             "url": package.reference}
    if host_id:
        audit["entity_id"] = package_entity_id(host_id, package.name, package.version)
    return {
        "package": {key: value for key, value in ecs.items() if value not in ("", None)},
        "system": {"audit": {"package": {key: value for key, value in audit.items() if value not in ("", None)}}},
    }


def package_event(package: Package, action: PackageAction, host_id: str,
                  changes: Mapping[str, Any] | None = None) -> Event:
    """Return the event for `action` on `package`, with `system.audit.changes` when given."""
    fields = package_fields(package, host_id)
    if changes:
        fields["system"]["audit"]["changes"] = dict(changes)
    return Event(dataset=DATASET, action=action.name, kind=action.kind, category=("package",), type=(action.type,),
                 message=package_message(package, action), fields=fields)


def package_update_changes(old: Package, new: Package) -> dict[str, Any]:
    """`system.audit.changes` of an update: the changed field names and, nested, their old values."""
    before = {name: _field_value(old, attribute) for name, attribute in COMPARED_FIELDS}
    after = {name: _field_value(new, attribute) for name, attribute in COMPARED_FIELDS}
    return describe_changes(before, changed_fields(before, after, [name for name, _ in COMPARED_FIELDS]))


# ---------------------------------------------------------------------------------------------------------
# Change detection (Auditbeat's reportChanges, pairing by slot before name)
# ---------------------------------------------------------------------------------------------------------

def _order(package: Package) -> tuple[str, str, str, str]:
    return package.name, package.architecture, package.version, package.release


def pair_packages(previous: Sequence[Package], current: Sequence[Package]
                  ) -> tuple[list[tuple[Package, Package]], list[Package], list[Package]]:
    """Return (updated pairs (old, new), installed, removed) between two package lists of one database.

    A package is unchanged when every attribute is equal. Of the others, a gone and a new package of the same
    name and architecture are one update; then, as Auditbeat pairs them, of the same name (an architecture
    change); the rest were installed or removed. Each list is sorted by name."""
    old_set, new_set = set(previous), set(current)
    gone = sorted((package for package in previous if package not in new_set), key=_order)
    came = sorted((package for package in current if package not in old_set), key=_order)
    if not gone and not came:
        return [], [], []
    unpaired = list(came)
    pairs: list[tuple[Package, Package]] = []
    removed: list[Package] = []
    for match in (lambda old, new: old.slot == new.slot, lambda old, new: old.name == new.name):
        left: list[Package] = []
        for old in gone:
            partner = next((new for new in unpaired if match(old, new)), None)
            if partner is None:
                left.append(old)
            else:
                unpaired.remove(partner)
                pairs.append((old, partner))
        gone = left
    removed = gone
    pairs.sort(key=lambda pair: _order(pair[1]))
    return pairs, unpaired, removed


def package_changes(previous: Sequence[Package], current: Sequence[Package], host_id: str) -> list[Event]:
    """Return package_updated, then package_installed, then package_removed events."""
    pairs, installed, removed = pair_packages(previous, current)
    events = [package_event(new, PACKAGE_UPDATED, host_id, package_update_changes(old, new)) for old, new in pairs]
    events += [package_event(package, PACKAGE_INSTALLED, host_id) for package in installed]
    events += [package_event(package, PACKAGE_REMOVED, host_id) for package in removed]
    return events


def keep_missing(read: Iterable[Package], last: Iterable[Package]) -> list[Package]:
    """The packages of an incomplete read, plus each last known package whose slot the read does not have."""
    packages = list(read)
    slots = {package.slot for package in packages}
    return packages + [package for package in last if package.slot not in slots]


# ---------------------------------------------------------------------------------------------------------
# Snapshots: {"format": 1, "databases": {"dpkg": {"exists", "complete", "packages": [Package, ...]}, ...}}
# ---------------------------------------------------------------------------------------------------------

def databases_of(snapshot: Any) -> dict[str, dict[str, Any]] | None:
    """A snapshot's database entries; None when it is not a snapshot of this format (warned)."""
    if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT \
            or not isinstance(snapshot.get("databases"), Mapping):
        if snapshot is not None:
            LOG.warning("Ignoring a package snapshot of an unknown format (%s)", type(snapshot).__name__)
        return None
    return {name: entry for name, entry in snapshot["databases"].items() if isinstance(entry, dict)}


def packages_of(entry: Mapping[str, Any]) -> list[Package]:
    """The packages of a database entry; a record that is not one (a corrupt state) is skipped with a warning."""
    packages: list[Package] = []
    raw = entry.get("packages")
    for index, record in enumerate(raw if isinstance(raw, list) else ()):
        try:
            packages.append(Package.from_json(record))
        except ValueError as error:
            LOG.warning("Ignoring package record %d of a saved snapshot: %s", index, error)
    return packages


@dataclass(frozen=True)
class LastRead:
    """The last entry read from one database and the signatures of its files at that read."""

    signatures: tuple[Any, ...]
    trusted: bool  # False: read it again next time (it was changing, or could not be read)
    entry: dict[str, Any]


class _StatFailed:
    """A stat that failed: equal to nothing, so the database is read again."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


class PackageDataset:
    """The `package` dataset: the installed packages of every enabled database that exists, as state events and
    as change events, each database read again only when one of its files changed."""

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)
        self.options: PackageOptions = dataset_options(context, "package")
        self.host_id = context.host_id
        self.readers = {name: READERS[name](self.hostfs) for name in self.options.databases}
        self._watched = {name: tuple(procfs.host_path(self.hostfs, path) for path in reader.watched)
                         for name, reader in self.readers.items()}
        self._last: dict[str, LastRead] = {}
        self._snapshot: dict[str, Any] | None = None
        self._warnings: dict[str, str] = {}
        self._unsettled_since: dict[str, float] = {}  # database -> monotonic time its files were first seen changing

    # -- reading ------------------------------------------------------------------------------------------

    def _warn(self, key: str, message: str | None) -> None:
        """Log `message` once while it stays the same; None clears it (the database is fine again)."""
        if message is None:
            self._warnings.pop(key, None)
        elif self._warnings.get(key) != message:
            self._warnings[key] = message
            LOG.warning("%s", message)

    def _signatures(self, database: str) -> tuple[Any, ...]:
        signatures: list[Any] = []
        for path in self._watched[database]:
            try:
                signatures.append(etc_files.stat_signature(path))
            except procfs.Unreadable:
                signatures.append(_StatFailed())
        return tuple(signatures)

    @staticmethod
    def _settled(signatures: Sequence[Any], now_ns: int) -> bool:
        return all(signature is None or (isinstance(signature, FileSignature) and signature.settled(now_ns))
                   for signature in signatures)

    def _entry(self, database: str, read: DatabaseRead, last: dict[str, Any] | None,
               settled: bool) -> dict[str, Any]:
        """The snapshot entry of one read: a failed or empty read keeps the last known packages; an incomplete one
        (or one of files that were changing) keeps those it lacks."""
        last_packages = packages_of(last) if last is not None else []
        problem = read.problem
        if read.packages is None:
            self._warn(database, problem)
            return last if last is not None else {"exists": True, "complete": False, "packages": []}
        packages = list(read.packages)
        complete = read.complete and settled and bool(packages)
        if not packages and (read.exists or last_packages):
            where = "" if read.exists else " (its files are gone)"
            kept = f"; the {len(last_packages)} packages known before are kept" if last_packages else ""
            problem = f"The {database} database under {self.hostfs} lists no package{where}{kept}"
        self._warn(database, problem)
        if not complete and last_packages:
            packages = keep_missing(packages, last_packages)
        return {"exists": read.exists, "complete": complete, "packages": packages}

    def _observe_database(self, database: str) -> dict[str, Any]:
        last = self._last.get(database)
        before = self._signatures(database)
        if last is not None and last.trusted and before == last.signatures:
            return last.entry
        reader = self.readers[database]
        read = reader.read()
        after = self._signatures(database)
        # Settled: no file changed during the read, nor shortly before it (within the file system's timestamp
        # granularity a later change could leave the signatures as they are). An unsettled read is read again at
        # the next poll. For a text database (dpkg, apk), whose file may be half written and whose packages pass
        # through transient states while dpkg works, an unsettled read is not used for up to SETTLE_LIMIT
        # seconds; after that it is, but it removes nothing until the files are still.
        settled = (before == after or reader.consistent) and self._settled(after, time.time_ns())
        if settled or reader.consistent:
            self._unsettled_since.pop(database, None)
        elif last is not None and (now := time.monotonic()) - self._unsettled_since.setdefault(
                database, now) < SETTLE_LIMIT:
            self._last[database] = LastRead(after, False, last.entry)
            return last.entry
        entry = self._entry(database, read, last.entry if last is not None else None, settled or reader.consistent)
        if last is not None and entry == last.entry:
            entry = last.entry  # the same packages: keep the snapshot object, so diff is free
        self._last[database] = LastRead(after, settled and read.packages is not None, entry)
        return entry

    def observe(self) -> dict[str, Any]:
        """Read the enabled databases; a database none of whose files changed since its last trusted read is not
        read again. Never raises for a missing, unreadable or malformed database.

        The returned snapshot is shared with the dataset's cache: callers must not modify it.
        """
        entries = {database: self._observe_database(database) for database in self.readers}
        if not any(entry.get("exists") for entry in entries.values()):
            self._warn("none", f"No package database found under {self.hostfs}: none of "
                               f"{', '.join(path for reader in self.readers.values() for path in reader.watched[:1])} "
                               "exists")
        else:
            self._warn("none", None)
        if self._snapshot is not None and all(entries[name] is self._snapshot["databases"].get(name)
                                              for name in entries):
            return self._snapshot
        self._snapshot = {"format": SNAPSHOT_FORMAT, "databases": entries}
        return self._snapshot

    # -- events -------------------------------------------------------------------------------------------

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """Return package_updated / package_installed / package_removed events; none on a first run, and none
        for a database that the previous snapshot did not look at.

        When `current` holds an incomplete read of a database (a first read after a restart that could not be
        completed), the packages it lacks are filled in from `previous` in place, so that what is committed is
        not missing them (and they are not reported installed again later)."""
        if previous is None or previous is current:
            return []
        old_databases, new_databases = databases_of(previous), databases_of(current)
        if old_databases is None or new_databases is None:
            return []
        events: list[Event] = []
        for database, entry in new_databases.items():
            old_entry = old_databases.get(database)
            if old_entry is None or old_entry is entry:
                continue
            old_packages = packages_of(old_entry)
            new_packages = packages_of(entry)
            if not entry.get("complete", True):
                entry["packages"] = new_packages = keep_missing(new_packages, old_packages)
            events += package_changes(old_packages, new_packages, self.host_id)
        return events

    def state_report(self, current: Any) -> Sequence[Event]:
        """Return one `existing_package` state event per package, by database then name."""
        events: list[Event] = []
        for entry in (databases_of(current) or {}).values():
            events += [package_event(package, EXISTING_PACKAGE, self.host_id)
                       for package in sorted(packages_of(entry), key=_order)]
        return events


def create(context: DatasetContext) -> PackageDataset:
    """Construct the package dataset (the registry in actors.datasets calls this)."""
    return PackageDataset(context)
