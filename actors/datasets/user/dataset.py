"""The user dataset: accounts from /etc/passwd, /etc/group and /etc/shadow, their state and their changes."""

from __future__ import annotations

import grp
import hashlib
import hmac
import logging
import os
import pwd
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from actors.hostfs import etc_files, procfs
from actors.datasets import DatasetContext, dataset_options
from actors.ecs import EcsField
from actors.hostfs.entity import user_entity_id
from actors.hostfs.etc_files import FileSignature, GroupEntry, LoadedFile, Parsed, PasswdEntry, ShadowEntry
from actors.event import CHANGE, STATE, Event, changed_fields, describe_changes, iso_millis

if TYPE_CHECKING:
    from actors.datasets.user.options import UserOptions

DATASET = "user"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field).
FIELDS: frozenset[str] = frozenset({"user.id", "user.name", "user.group.id", "user.group.name", "related.user"})
_KEYWORD = EcsField("keyword", array=False)
# Its own fields (Auditbeat's user/_meta/fields.yml, ids as strings, plus the entity id), with their types.
AUDIT_FIELDS: Mapping[str, EcsField] = {
    **{f"system.audit.user.{key}": _KEYWORD
       for key in ("name", "uid", "gid", "dir", "shell", "user_information", "entity_id", "password.type")},
    "system.audit.user.password.last_changed": EcsField("date", array=False),
    "system.audit.user.group": EcsField("object", array=True),  # every group of the user: {name, gid, id}
    "system.audit.user.group.name": _KEYWORD,
    "system.audit.user.group.gid": _KEYWORD,
    "system.audit.user.group.id": _KEYWORD,
}
LOG = logging.getLogger("hostaudit.user")

SNAPSHOT_FORMAT = 1
SECONDS_PER_DAY = 86_400

# Auditbeat's passwordType.String() values.
SHADOW_PASSWORD = "shadow_password"
PASSWORD_DISABLED = "password_disabled"
NO_PASSWORD = "no_password"
CRYPT_PASSWORD = "crypt_password"
LOCK_PREFIXES = ("!", "*")  # usermod -L / passwd -l prefix "!"; "*" (or "*LK*") never matches any password

# Named in system.audit.changes.fields when the password hash changed. The hash, and its digest, never leave.
PASSWORD_HASH_FIELD = "system.audit.user.password.hash"
PASSWORD_FIELDS = ("system.audit.user.password.type", "system.audit.user.password.last_changed")
# What a user_changed event compares. Auditbeat ignores gecos (user_information); we report it too.
ACCOUNT_FIELDS = (
    "user.name",
    "user.group.id",
    "user.group.name",
    "system.audit.user.dir",
    "system.audit.user.shell",
    "system.audit.user.user_information",
    "system.audit.user.group",
)
KEY_ID_LABEL = b"hostaudit user password digest key id"


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------

# Declared in options.py (UserOptions, parse_options), checked by the configuration at load.


# ---------------------------------------------------------------------------------------------------------
# Records (what the snapshot holds; JSON-serialisable through to_json / from_json)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Group:
    """One group of a user; `name` is None when the gid is in no group entry."""

    gid: int
    name: str | None


@dataclass(frozen=True, slots=True)
class Password:
    """What is known of a user's password: its type, the day it last changed and a keyed digest of the hash.

    `digest` is HMAC-SHA256(digest key, hash) in hex ("" when there is no hash): comparable between two reads
    with the same key, useless for cracking without the key.
    """

    type: str
    last_changed_days: int | None = None
    digest: str = ""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One account as the dataset reports it. `password` is None when unknown (detection off, shadow unreadable)."""

    name: str
    uid: int
    gid: int
    user_information: str
    dir: str
    shell: str
    groups: tuple[Group, ...]
    password: Password | None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": self.name, "uid": self.uid, "gid": self.gid, "user_information": self.user_information,
            "dir": self.dir, "shell": self.shell,
            "groups": [{"gid": group.gid, "name": group.name} for group in self.groups],
        }
        if self.password is not None:
            record["password"] = {"type": self.password.type, "last_changed_days": self.password.last_changed_days,
                                  "digest": self.password.digest}
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "UserRecord":
        """Rebuild a record from to_json() output; raises ValueError when it is not one."""
        try:
            password = record.get("password")
            return cls(
                name=_typed(record["name"], str), uid=_typed(record["uid"], int), gid=_typed(record["gid"], int),
                user_information=_typed(record["user_information"], str), dir=_typed(record["dir"], str),
                shell=_typed(record["shell"], str),
                groups=tuple(Group(_typed(group["gid"], int), _typed(group["name"], (str, type(None))))
                             for group in record["groups"]),
                password=None if password is None else Password(
                    _typed(password["type"], str), _typed(password["last_changed_days"], (int, type(None))),
                    _typed(password["digest"], str)),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a user record ({type(error).__name__}: {error})") from None


def _typed(value: Any, kinds: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Passwords: type as Auditbeat derives it, and a keyed digest instead of the hash
# ---------------------------------------------------------------------------------------------------------

class PasswordDigests:
    """Keyed digests of password hashes (HMAC-SHA256), and an id of the key that made them."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.key_id = hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def digest(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"PasswordDigests(key_id={self.key_id!r})"


def classify_secret(secret: str, hashed_type: str, last_changed_days: int | None,
                    digests: PasswordDigests) -> Password:
    """Auditbeat's rule for a password field: "" is no_password; a "!" or "*" prefix (a locked or disabled
    account) is password_disabled; anything else a hash of `hashed_type`.

    Unlike Auditbeat, a locked hash keeps its digest, so a hash changed while the account is locked is seen.
    """
    digest = digests.digest(secret) if secret else ""
    if secret == "":
        return Password(NO_PASSWORD, last_changed_days)
    if secret.startswith(LOCK_PREFIXES):
        return Password(PASSWORD_DISABLED, last_changed_days, digest)
    return Password(hashed_type, last_changed_days, digest)


def password_of(passwd_field: str, shadow: Mapping[str, ShadowEntry] | None, name: str,
                digests: PasswordDigests) -> Password | None:
    """Return a user's password info; None when it lives in /etc/shadow and that could not be read.

    "x" in passwd means the shadow entry decides (shadow_password while there is none); any other passwd value
    is the password itself (a crypt hash on old systems, "*" disabled, "" none).
    """
    if passwd_field != "x":
        return classify_secret(passwd_field, CRYPT_PASSWORD, None, digests)
    if shadow is None:
        return None
    entry = shadow.get(name)
    if entry is None:
        return Password(SHADOW_PASSWORD)
    return classify_secret(entry.password, SHADOW_PASSWORD, entry.last_changed_days, digests)


# ---------------------------------------------------------------------------------------------------------
# Groups: all of a user's groups, the primary first, as getgrouplist(3) lists them
# ---------------------------------------------------------------------------------------------------------

GroupsOf = Callable[[str, int], tuple[Group, ...]]


def _unique(gids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(gids))


def groups_from_entries(entries: Sequence[GroupEntry]) -> GroupsOf:
    """Return a look-up (user name, primary gid) -> groups, from parsed /etc/group entries.

    Like glibc's files backend: the primary gid first, then every group listing the user, in file order;
    a gid's name is the one of the first entry with that gid.
    """
    name_by_gid: dict[int, str] = {}
    gids_by_member: dict[str, list[int]] = {}
    for entry in entries:
        name_by_gid.setdefault(entry.gid, entry.name)
        for member in entry.members:
            gids_by_member.setdefault(member, []).append(entry.gid)

    def groups_of(user: str, primary_gid: int) -> tuple[Group, ...]:
        gids = _unique([primary_gid, *gids_by_member.get(user, ())])
        return tuple(Group(gid, name_by_gid.get(gid)) for gid in gids)

    return groups_of


def groups_from_nss() -> GroupsOf:
    """Return a look-up (user name, primary gid) -> groups through NSS (getgrouplist, getgrgid)."""
    names: dict[int, str | None] = {}

    def group_name(gid: int) -> str | None:
        if gid not in names:
            try:
                names[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                names[gid] = None
        return names[gid]

    def groups_of(user: str, primary_gid: int) -> tuple[Group, ...]:
        try:
            gids = _unique([primary_gid, *os.getgrouplist(user, primary_gid)])
        except OSError as error:
            LOG.debug("getgrouplist(%s) failed: %s", user, error)
            gids = [primary_gid]
        return tuple(Group(gid, group_name(gid)) for gid in gids)

    return groups_of


def build_users(passwd: Sequence[PasswdEntry], groups_of: GroupsOf, shadow: Mapping[str, ShadowEntry] | None,
                digests: PasswordDigests | None) -> list[UserRecord]:
    """Return the user records, in passwd order; `digests` None means password detection is off."""
    return [
        UserRecord(
            name=entry.name, uid=entry.uid, gid=entry.gid, user_information=entry.gecos, dir=entry.home,
            shell=entry.shell, groups=groups_of(entry.name, entry.gid),
            password=None if digests is None else password_of(entry.password, shadow, entry.name, digests),
        )
        for entry in passwd
    ]


def shadow_by_name(entries: Sequence[ShadowEntry]) -> dict[str, ShadowEntry]:
    """Index shadow entries by user name; the first wins, as getspnam(3) returns it."""
    index: dict[str, ShadowEntry] = {}
    for entry in entries:
        index.setdefault(entry.name, entry)
    return index


# ---------------------------------------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------------------------------------

def make_snapshot(users: Sequence[UserRecord] | None, source: str, key_id: str | None) -> dict[str, Any]:
    """Return the JSON-serialisable snapshot; `users` None means the accounts could not be read."""
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "source": source,
        "users": None if users is None else [user.to_json() for user in users],
    }
    if key_id is not None:
        snapshot["digest_key_id"] = key_id
    return snapshot


def users_of(snapshot: Any) -> list[UserRecord] | None:
    """Return a snapshot's user records; None when it holds none (unreadable accounts, or not a snapshot).

    A record that does not parse (a corrupt state file) is skipped with a warning.
    """
    if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
        if snapshot is not None:
            LOG.warning("Ignoring a user snapshot of an unknown format (%s)", type(snapshot).__name__)
        return None
    raw_users = snapshot.get("users")
    if not isinstance(raw_users, list):
        return None
    records: list[UserRecord] = []
    for index, raw in enumerate(raw_users):
        try:
            records.append(UserRecord.from_json(raw if isinstance(raw, Mapping) else {}))
        except ValueError as error:
            LOG.warning("Ignoring user record %d of a saved snapshot: %s", index, error)
    return records


# ---------------------------------------------------------------------------------------------------------
# Event fields and messages
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserAction:
    """One `event.action` of the dataset: its ECS kind and type and its message prefix."""

    name: str
    kind: str
    type: str
    prefix: str


EXISTING_USER = UserAction("existing_user", STATE, "info", "Existing")
USER_ADDED = UserAction("user_added", CHANGE, "creation", "New")
USER_REMOVED = UserAction("user_removed", CHANGE, "deletion", "Removed")
USER_CHANGED = UserAction("user_changed", CHANGE, "change", "Changed")
PASSWORD_CHANGED = UserAction("password_changed", CHANGE, "change", "Password changed for")


def _group_label(group: Group) -> str:
    return group.name if group.name is not None else str(group.gid)


def user_message(record: UserRecord, action: UserAction) -> str:
    """Auditbeat's message: "<prefix> user <name> (UID: <uid>, Groups: <name,name>)"."""
    groups = ",".join(_group_label(group) for group in record.groups)
    return f"{action.prefix} user {record.name} (UID: {record.uid}, Groups: {groups})"


def _audit_user(record: UserRecord, host_id: str) -> dict[str, Any]:
    """`system.audit.user.*`, as Auditbeat's User.toMapStr() (ids as strings), plus the entity id."""
    audit: dict[str, Any] = {"name": record.name, "uid": str(record.uid), "gid": str(record.gid),
                             "dir": record.dir, "shell": record.shell}
    if record.user_information:
        audit["user_information"] = record.user_information
    if record.password is not None:
        audit["password"] = {"type": record.password.type}
        if record.password.last_changed_days is not None:
            audit["password"]["last_changed"] = iso_millis(record.password.last_changed_days * SECONDS_PER_DAY)
    if record.groups:
        audit["group"] = [
            {**({"name": group.name} if group.name is not None else {}), "gid": str(group.gid), "id": str(group.gid)}
            for group in record.groups
        ]
    if host_id:
        # Auditbeat emits this as `user.entity_id`, which is not an ECS 9.4 field: it lives here instead.
        audit["entity_id"] = user_entity_id(host_id, record.name, record.uid)
    return audit


def user_fields(record: UserRecord, host_id: str) -> dict[str, Any]:
    """The event's own fields: ECS `user.*` and `related.user`, and `system.audit.user.*`."""
    primary = next((group for group in record.groups if group.gid == record.gid), None)
    user_group: dict[str, Any] = {"id": str(record.gid)}
    if primary is not None and primary.name is not None:
        user_group["name"] = primary.name
    return {
        "user": {"id": str(record.uid), "name": record.name, "group": user_group},
        "related": {"user": [record.name]},
        "system": {"audit": {"user": _audit_user(record, host_id)}},
    }


def user_event(record: UserRecord, action: UserAction, host_id: str,
               changes: Mapping[str, Any] | None = None, also_related: Sequence[str] = ()) -> Event:
    """Return the event for `action` on `record`, with `system.audit.changes` when given."""
    fields = user_fields(record, host_id)
    for name in also_related:
        if name not in fields["related"]["user"]:
            fields["related"]["user"].append(name)
    if changes:
        fields["system"]["audit"]["changes"] = dict(changes)
    return Event(dataset=DATASET, action=action.name, kind=action.kind, category=("iam",), type=(action.type,),
                 message=user_message(record, action), fields=fields)


# ---------------------------------------------------------------------------------------------------------
# Change detection
# ---------------------------------------------------------------------------------------------------------

def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def password_changes(old: UserRecord, new: UserRecord, compare_digests: bool) -> list[str]:
    """Return the password fields that changed: type, last-changed day (either way, unlike Auditbeat's Before)
    and the hash (by digest, when both digests come from the same key). None when either side is unknown."""
    if old.password is None or new.password is None:
        return []
    old_flat = _flatten(user_fields(old, ""))
    new_flat = _flatten(user_fields(new, ""))
    changed = changed_fields(old_flat, new_flat, PASSWORD_FIELDS)
    if compare_digests and old.password.digest != new.password.digest:
        changed.append(PASSWORD_HASH_FIELD)
    return changed


def pair_users(previous: Sequence[UserRecord], current: Sequence[UserRecord]
               ) -> tuple[list[tuple[UserRecord, UserRecord]], list[UserRecord], list[UserRecord]]:
    """Pair old and new users by UID (same name first, for UIDs shared by several accounts).

    Returns (pairs in current order, added in current order, removed in previous order).
    """
    unmatched: dict[int, list[UserRecord]] = {}
    for record in previous:
        unmatched.setdefault(record.uid, []).append(record)
    partner: dict[int, UserRecord] = {}
    for index, record in enumerate(current):
        same_name = next((old for old in unmatched.get(record.uid, []) if old.name == record.name), None)
        if same_name is not None:
            unmatched[record.uid].remove(same_name)
            partner[index] = same_name
    for index, record in enumerate(current):
        if index not in partner and unmatched.get(record.uid):
            partner[index] = unmatched[record.uid].pop(0)
    pairs = [(partner[index], record) for index, record in enumerate(current) if index in partner]
    added = [record for index, record in enumerate(current) if index not in partner]
    leftover = {id(record) for records in unmatched.values() for record in records}
    removed = [record for record in previous if id(record) in leftover]
    return pairs, added, removed


def pair_events(old: UserRecord, new: UserRecord, host_id: str, compare_digests: bool) -> list[Event]:
    """Return password_changed and/or user_changed for one user seen before and now (Auditbeat's order)."""
    if old == new:
        return []
    events: list[Event] = []
    old_flat = _flatten(user_fields(old, host_id))
    secret = (PASSWORD_HASH_FIELD,)  # named when it changed; neither the hash nor its digest is ever given
    if changed := password_changes(old, new, compare_digests):
        events.append(user_event(new, PASSWORD_CHANGED, host_id, describe_changes(old_flat, changed, secret)))
    if changed := changed_fields(old_flat, _flatten(user_fields(new, host_id)), ACCOUNT_FIELDS):
        renamed = (old.name,) if old.name != new.name else ()
        events.append(user_event(new, USER_CHANGED, host_id, describe_changes(old_flat, changed, secret), renamed))
    return events


def user_changes(previous: Sequence[UserRecord], current: Sequence[UserRecord], host_id: str,
                 compare_digests: bool) -> list[Event]:
    """Return the change events between two user lists: changes, then additions, then removals."""
    pairs, added, removed = pair_users(previous, current)
    events = [event for old, new in pairs for event in pair_events(old, new, host_id, compare_digests)]
    events += [user_event(record, USER_ADDED, host_id) for record in added]
    events += [user_event(record, USER_REMOVED, host_id) for record in removed]
    return events


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------

class _Unknown:
    """A stat that failed: equal to nothing, so the files are read again."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class LastRead:
    """The last snapshot and the signatures of the files it was read from (None entries: file absent)."""

    signatures: tuple[FileSignature | None | _Unknown, ...]
    trusted: bool  # False when a file had just changed as we read it (see etc_files.RACY_WINDOW_NS)
    snapshot: dict[str, Any]


class UserDataset:
    """The `user` dataset: one snapshot of the accounts per poll, `existing_user` state events, change events."""

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)
        self.options: UserOptions = dataset_options(context, "user")
        self.host_id = context.host_id
        self.digests = self._make_digests(context.digest_key) if self.options.detect_password_changes else None
        self._last: LastRead | None = None
        self._file_warnings: dict[str, str] = {}
        self._key_mismatch_warned = False
        if self.options.source == "nss" and self.hostfs != Path("/"):
            LOG.warning("user.source: nss lists the accounts of the agent's own name service, not of hostfs %s; "
                        "only %s is read under hostfs", self.hostfs, etc_files.SHADOW)

    @staticmethod
    def _make_digests(key: bytes) -> PasswordDigests:
        if not key:
            LOG.warning("No digest key given to the user dataset: using a random in-memory key, so password "
                        "changes made while the agent is stopped cannot be detected after a restart")
            key = os.urandom(32)
        return PasswordDigests(key)

    def _path(self, absolute: str) -> Path:
        return procfs.host_path(self.hostfs, absolute)

    def _watched(self) -> tuple[Path, ...]:
        names: tuple[str, ...] = (etc_files.PASSWD, etc_files.GROUP) if self.options.source == "files" else ()
        if self.options.detect_password_changes:
            names += (etc_files.SHADOW,)
        return tuple(self._path(name) for name in names)

    # -- reading ------------------------------------------------------------------------------------------

    def _warn_file(self, path: Path, message: str | None) -> None:
        """Log `message` about `path` once while it stays the same; None clears it (the file is fine again)."""
        key = str(path)
        if message is None:
            self._file_warnings.pop(key, None)
        elif self._file_warnings.get(key) != message:
            self._file_warnings[key] = message
            LOG.warning("%s", message)

    def _load(self, absolute: str, parser: Callable[[bytes], Parsed[Any]], consequence: str,
              require_entries: bool = False) -> LoadedFile | None:
        """Read and parse one file; None when it is absent or unreadable. A problem is warned about once."""
        path = self._path(absolute)
        loaded: LoadedFile | None = None
        problem: str | None = None
        try:
            loaded = etc_files.load(path, parser, LOG)
        except procfs.Unreadable as error:
            problem = str(error)
        if loaded is not None and loaded.signature is None:
            loaded, problem = None, f"{path} does not exist"
        elif loaded is not None and require_entries and not loaded.parsed.entries:
            problem = f"{path} has no valid entry"
        self._warn_file(path, None if problem is None else f"{problem}; {consequence}")
        return loaded

    def _signature(self, path: Path) -> FileSignature | None | _Unknown:
        try:
            return etc_files.stat_signature(path)
        except procfs.Unreadable:
            return _Unknown()

    def _read_shadow(self) -> tuple[dict[str, ShadowEntry] | None, LoadedFile | None]:
        loaded = self._load(etc_files.SHADOW, etc_files.parse_shadow,
                            "password types, last-change dates and password changes are left out")
        return (None, None) if loaded is None else (shadow_by_name(loaded.parsed.entries), loaded)

    def _read_files(self) -> tuple[list[PasswdEntry] | None, GroupsOf, list[LoadedFile | None]]:
        passwd = self._load(etc_files.PASSWD, etc_files.parse_passwd, "no user can be reported",
                            require_entries=True)
        group = self._load(etc_files.GROUP, etc_files.parse_group, "users are reported without their groups")
        entries = None if passwd is None else list(passwd.parsed.entries)
        return entries, groups_from_entries(group.parsed.entries if group else ()), [passwd, group]

    def _read_nss(self) -> tuple[list[PasswdEntry] | None, GroupsOf, list[LoadedFile | None]]:
        entries = [PasswdEntry(p.pw_name, p.pw_passwd, p.pw_uid, p.pw_gid, p.pw_gecos, p.pw_dir, p.pw_shell)
                   for p in pwd.getpwall()]
        return entries, groups_from_nss(), []

    def _read(self) -> LastRead:
        """Read every source now and return the snapshot with the signatures it was read at."""
        read = self._read_files if self.options.source == "files" else self._read_nss
        passwd, groups_of, loaded = read()
        shadow: dict[str, ShadowEntry] | None = None
        if self.options.detect_password_changes:
            shadow, shadow_file = self._read_shadow()
            loaded.append(shadow_file)
        users = build_users(passwd, groups_of, shadow, self.digests) if passwd else None
        key_id = self.digests.key_id if self.digests is not None else None
        snapshot = make_snapshot(users, self.options.source, key_id)
        signatures = tuple(file.signature if file is not None else self._signature(path)
                           for file, path in zip(loaded, self._watched()))
        trusted = self.options.source == "files" and all(file is None or file.trusted for file in loaded)
        return LastRead(signatures, trusted, snapshot)

    def observe(self) -> dict[str, Any]:
        """Read the accounts now; when no watched file changed since the last read, return that read's snapshot
        without opening any file. Never raises for a missing, unreadable or malformed file.

        The returned snapshot is shared with the dataset's cache: callers must not modify it.
        """
        last = self._last
        if last is not None and last.trusted:
            if tuple(self._signature(path) for path in self._watched()) == last.signatures:
                return last.snapshot
        read = self._read()
        if read.snapshot["users"] is None and last is not None and last.snapshot["users"] is not None:
            read = replace(read, snapshot=last.snapshot)  # keep the last good accounts, not "everyone removed"
        self._last = read
        return read.snapshot

    # -- events -------------------------------------------------------------------------------------------

    def _digests_comparable(self, previous: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
        old_key, new_key = previous.get("digest_key_id"), current.get("digest_key_id")
        if old_key is None or new_key is None or old_key == new_key:
            return True
        if not self._key_mismatch_warned:
            self._key_mismatch_warned = True
            LOG.warning("The saved user state was made with another digest key: password hash changes since then "
                        "cannot be detected this time (type and last-change date changes still are)")
        return False

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """Return user_added / user_removed / user_changed / password_changed events; none on a first run."""
        if previous is None or previous is current:
            return []
        old_users, new_users = users_of(previous), users_of(current)
        if old_users is None or new_users is None:
            return []
        return user_changes(old_users, new_users, self.host_id, self._digests_comparable(previous, current))

    def state_report(self, current: Any) -> Sequence[Event]:
        """Return one `existing_user` state event per user, in passwd order."""
        return [user_event(record, EXISTING_USER, self.host_id) for record in users_of(current) or ()]


def create(context: DatasetContext) -> UserDataset:
    """Construct the user dataset (the registry in actors.datasets calls this)."""
    return UserDataset(context)
