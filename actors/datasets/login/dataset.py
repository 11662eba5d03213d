"""The login dataset: logins, logouts, failed logins, boots and shutdowns from the host's wtmp and btmp files,
each record reported once, across restarts, rotations and rewrites."""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from actors.datasets import DatasetContext, dataset_options
from actors.datasets.login import files, utmp
from actors.datasets.login.files import BTMP, WTMP, Found, NotUtmp, Source
from actors.datasets.login.watch import FilesWatch
from actors.ecs import EcsField
from actors.event import CHANGE, Event
from actors.hostfs import etc_files, procfs

if TYPE_CHECKING:
    from actors.datasets.login.options import LoginOptions

DATASET = "login"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field).
FIELDS: frozenset[str] = frozenset({"user.name", "user.id", "related.user", "related.ip", "process.pid",
                                    "source.ip", "source.domain"})
# Its own fields, with their types: the file a record came from and the terminal (ECS has no field for either).
AUDIT_FIELDS: Mapping[str, EcsField] = {
    "system.audit.login.origin": EcsField("keyword", array=False),
    "system.audit.login.terminal": EcsField("keyword", array=False),
}
LOG = logging.getLogger("hostaudit.login")

SNAPSHOT_FORMAT = 1
RECORDS_PER_PASS = 8192  # records examined per call, so a huge file is read (and spooled) in bounded batches
RETIRED_FILES = 32  # files gone from the patterns whose content is remembered, to recognise a copy of them
MAX_SESSIONS = 1024  # open sessions remembered (distinct terminals); beyond, the oldest is forgotten
STALLED_TAIL_SECONDS = 10.0  # an incomplete record at the end of a file for this long is warned about


# ---------------------------------------------------------------------------------------------------------
# What the snapshot holds (JSON-serialisable through to_json / from_json)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cursor:
    """How far one file (by device and inode) was read, and what identifies its content.

    `last` is the bytes just before `offset` (one record): while they are still there, records after `offset`
    were appended; when not, the file was rewritten. `head` is a digest of its first record, to recognise a
    copy of it (a compressed rotation). Offsets of a compressed file count its uncompressed bytes."""

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    offset: int = 0
    head: str = ""
    last: bytes = b""
    last_time: float | None = None  # time of the last record read from it
    compression: str | None = None
    pending: bool = False  # the last read stopped before the end of the data (the per-pass budget)
    ignored: str | None = None  # why the file is not read (not a utmp file)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size,
                                  "mtime_ns": self.mtime_ns, "offset": self.offset, "head": self.head,
                                  "last": base64.b64encode(self.last).decode("ascii"),
                                  "last_time": self.last_time}
        if self.compression:
            record["compression"] = self.compression
        if self.pending:
            record["pending"] = True
        if self.ignored:
            record["ignored"] = self.ignored
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Cursor":
        """Rebuild a cursor from to_json() output; ValueError when it is not one."""
        try:
            last_time = record.get("last_time")
            cursor = cls(
                path=_typed(record["path"], str), kind=_typed(record["kind"], str), size=_typed(record["size"], int),
                mtime_ns=_typed(record["mtime_ns"], int), offset=_typed(record["offset"], int),
                head=_typed(record["head"], str), last=base64.b64decode(_typed(record["last"], str), validate=True),
                last_time=None if last_time is None else float(_typed(last_time, (int, float))),
                compression=_typed(record.get("compression"), (str, type(None))),
                pending=_typed(record.get("pending", False), bool),
                ignored=_typed(record.get("ignored"), (str, type(None))),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a file cursor ({type(error).__name__}: {error})") from None
        if cursor.kind not in (WTMP, BTMP) or cursor.offset < 0 or len(cursor.last) > utmp.RECORD_SIZE:
            raise ValueError("not a file cursor (kind, offset or last out of range)")
        return cursor


@dataclass(frozen=True, slots=True)
class Session:
    """An open login on a terminal, kept until its logout record (which names no user) comes."""

    user: str
    uid: int | None
    pid: int
    ip: str | None
    host: str

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "uid": self.uid, "pid": self.pid, "ip": self.ip, "host": self.host}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Session":
        try:
            return cls(_typed(record["user"], str), _typed(record["uid"], (int, type(None))),
                       _typed(record["pid"], int), _typed(record["ip"], (str, type(None))),
                       _typed(record["host"], str))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a login session ({type(error).__name__}: {error})") from None


def _typed(value: Any, kinds: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kinds is not bool and (not isinstance(kinds, tuple) or bool not in kinds):
        raise TypeError(f"unexpected {type(value).__name__}")
    if not isinstance(value, kinds):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value


@dataclass
class State:
    """A snapshot, unpacked: cursors by file id ("device:inode"), remembered cursors of files that went,
    and the open sessions by terminal."""

    cursors: dict[str, Cursor] = field(default_factory=dict)
    retired: list[Cursor] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": SNAPSHOT_FORMAT,
                "files": {file_id: cursor.to_json() for file_id, cursor in self.cursors.items()},
                "retired": [cursor.to_json() for cursor in self.retired],
                "sessions": {tty: session.to_json() for tty, session in self.sessions.items()}}

    @classmethod
    def from_json(cls, snapshot: Any) -> "State | None":
        """The state of a snapshot; None for no snapshot (a first run). Entries that do not parse (a damaged
        state store) are left out with a warning; a snapshot of another format counts as none."""
        if snapshot is None:
            return None
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
            LOG.warning("login: ignoring a saved state of an unknown format (%s); reading the files as on a first "
                        "run", type(snapshot).__name__)
            return None
        state = cls()
        raw_files = snapshot.get("files")
        for file_id, raw in (raw_files.items() if isinstance(raw_files, Mapping) else ()):
            try:
                state.cursors[str(file_id)] = Cursor.from_json(raw if isinstance(raw, Mapping) else {})
            except ValueError as error:
                LOG.warning("login: ignoring the saved cursor of file %s: %s (the file is read as a new one)",
                            file_id, error)
        raw_retired = snapshot.get("retired")
        for raw in (raw_retired if isinstance(raw_retired, list) else ()):
            try:
                state.retired.append(Cursor.from_json(raw if isinstance(raw, Mapping) else {}))
            except ValueError as error:
                LOG.warning("login: ignoring a saved cursor of a removed file: %s", error)
        raw_sessions = snapshot.get("sessions")
        for tty, raw in (raw_sessions.items() if isinstance(raw_sessions, Mapping) else ()):
            try:
                state.sessions[str(tty)] = Session.from_json(raw if isinstance(raw, Mapping) else {})
            except ValueError as error:
                LOG.warning("login: ignoring a saved open session: %s (its logout will not be reported)", error)
        return state


# ---------------------------------------------------------------------------------------------------------
# Events and messages
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoginAction:
    """One kind of event: its `event.action`, ECS category and type, outcome, and message verb."""

    name: str
    category: tuple[str, ...]
    type: tuple[str, ...]
    outcome: str | None
    verb: str


USER_LOGIN = LoginAction("user_login", ("authentication",), ("start", "authentication_success"), "success", "Login")
FAILED_LOGIN = LoginAction("user_login", ("authentication",), ("start", "authentication_failure"), "failure",
                           "Failed login")
USER_LOGOUT = LoginAction("user_logout", ("authentication",), ("end",), None, "Logout")
BOOT = LoginAction("boot", ("host",), ("start",), None, "System boot")
SHUTDOWN = LoginAction("shutdown", ("host",), ("end",), None, "System shutdown")


def login_message(action: LoginAction, session: Session, tty: str) -> str:
    """Auditbeat's message: "<verb> by user <name> (UID: <uid>) on <tty> (PID: <pid>) from <host> (IP: <ip>)",
    -1 for an unknown UID and <nil> for no IP, as Go's fmt prints them."""
    uid = -1 if session.uid is None else session.uid
    ip = "<nil>" if session.ip is None else session.ip
    return f"{action.verb} by user {session.user} (UID: {uid}) on {tty} (PID: {session.pid}) from {session.host} " \
           f"(IP: {ip})"


def user_event(action: LoginAction, session: Session, tty: str, origin: str, when: float, startup: bool,
               reason: str | None = None) -> Event:
    """A user_login or user_logout event."""
    fields: dict[str, Any] = {}
    login: dict[str, Any] = {"origin": origin}
    if tty:
        login["terminal"] = tty
    if session.user:
        fields["user"] = {"name": session.user}
        fields["related"] = {"user": [session.user]}
        if session.uid is not None:
            fields["user"]["id"] = str(session.uid)
    fields["process"] = {"pid": session.pid}
    if session.ip is not None:
        fields["source"] = {"ip": session.ip}
        fields.setdefault("related", {})["ip"] = [session.ip]
    if session.host and session.host != session.ip:
        fields.setdefault("source", {})["domain"] = session.host
    event_fields: dict[str, Any] = {}
    if action.outcome:
        event_fields["outcome"] = action.outcome
    if reason:
        event_fields["reason"] = reason
    if event_fields:
        fields["event"] = event_fields
    fields["system"] = {"audit": {"login": login, **({"detected_at_startup": True} if startup else {})}}
    return Event(DATASET, action.name, CHANGE, action.category, action.type,
                 login_message(action, session, tty), fields, timestamp=when)


def host_event(action: LoginAction, origin: str, when: float, startup: bool) -> Event:
    """A boot or shutdown event."""
    audit: dict[str, Any] = {"login": {"origin": origin}}
    if startup:
        audit["detected_at_startup"] = True
    return Event(DATASET, action.name, CHANGE, action.category, action.type, action.verb,
                 {"system": {"audit": audit}}, timestamp=when)


# ---------------------------------------------------------------------------------------------------------
# Reading one pass
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Pass:
    """One call's work: the state being advanced, the events so far, the record budget left."""

    state: State
    events: list[Event]
    budget: int
    user_ids: Mapping[str, int]
    lineages: dict[tuple[str, str], list[Cursor]]  # (kind, head digest) -> cursors with that first record
    gone: dict[str, Cursor]  # path -> cursor of a file whose inode is no longer matched
    backlog: bool = False

    def remember(self, cursor: Cursor) -> None:
        if cursor.head:
            self.lineages.setdefault((cursor.kind, cursor.head), []).append(cursor)


class LoginDataset:
    """The `login` dataset (a log dataset, see actors.datasets.LogDataset): `advance` reads every matched file
    on from its committed cursor, in bounded passes; its stream notices changes within POLL_SECONDS."""

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)
        self.options: LoginOptions = dataset_options(context, "login")
        self.patterns = ((WTMP, self.options.wtmp_file_pattern), (BTMP, self.options.btmp_file_pattern))
        self.more = threading.Event()  # set when a pass stopped before the end: the stream asks for another
        self._horizon: dict[str, int] | None = None  # file id -> size when this process first looked
        self._kept: tuple[str, int, Source] | None = None  # a compressed file left open mid-way, at an offset
        self._warned: dict[str, str] = {}
        self._stalled_since: dict[tuple[str, int], float] = {}

    # -- the contract ---------------------------------------------------------------------------------------

    def advance(self, previous: Any) -> tuple[Any, Sequence[Event]]:
        """Read the records written since `previous` (None on a first run: every file from its start, as
        Auditbeat does); return the new snapshot and the events. At most RECORDS_PER_PASS records are examined:
        when more are waiting, `more` is set (the stream then asks again at once). Returns `previous` itself
        when nothing changed. Never raises for a missing, unreadable or malformed file."""
        restored = State.from_json(previous)
        state = restored or State()
        state = State(dict(state.cursors), list(state.retired), dict(state.sessions))
        found = files.find_files(self.hostfs, self.patterns, self._warn)
        self._warn_unmatched(found)
        if self._horizon is None:
            self._horizon = {each.id: each.size for each in found}
        present = {each.id for each in found}
        work = Pass(state, [], RECORDS_PER_PASS, etc_files.user_ids(self.hostfs, LOG), {}, {})
        for cursor in [*state.retired, *state.cursors.values()]:
            work.remember(cursor)
        for file_id, cursor in state.cursors.items():
            if file_id not in present:
                work.gone[cursor.path] = cursor
        cursors: dict[str, Cursor] = {}
        for each in found:
            cursor = state.cursors.get(each.id)
            if cursor is not None and cursor.kind == each.kind and not cursor.pending \
                    and (cursor.size, cursor.mtime_ns) == (each.size, each.mtime_ns):
                cursors[each.id] = cursor if cursor.path == each.path else replace(cursor, path=each.path)
                continue
            if work.budget <= 0:
                work.backlog = True
                if cursor is not None:
                    cursors[each.id] = cursor
                continue
            updated = self._read(each, cursor, work)
            if updated is not None:
                cursors[each.id] = updated
                work.remember(updated)
                work.backlog = work.backlog or updated.pending
        self._close_kept(keep=work.backlog)
        retired = list(state.retired)
        for file_id, cursor in state.cursors.items():
            if file_id not in present and cursor.head and all(
                    (old.kind, old.head, old.last) != (cursor.kind, cursor.head, cursor.last) for old in retired):
                retired.append(cursor)
        new_state = State(cursors, retired[-RETIRED_FILES:], state.sessions)
        if work.backlog:
            self.more.set()
        else:
            self.more.clear()
        snapshot = new_state.to_json()
        if not work.events and previous is not None and snapshot == previous:
            return previous, []
        return snapshot, work.events

    def state_report(self, current: Any) -> Sequence[Event]:
        """None: logins are events, never state (as Auditbeat)."""
        return []

    def open_stream(self) -> FilesWatch | None:
        """A stat poll of the matched files every POLL_SECONDS (None when both patterns are empty)."""
        if not any(pattern for _, pattern in self.patterns):
            return None
        return FilesWatch(files.Lister(self.hostfs, self.patterns).signature, self.more)

    # -- one file -------------------------------------------------------------------------------------------

    def _read(self, found: Found, cursor: Cursor | None, work: Pass) -> Cursor | None:
        """Read on in one file; its new cursor (the old one, or None, when it cannot be read)."""
        try:
            source, reused = self._open(found, cursor)
        except NotUtmp as error:
            self._warn(f"ignored {found.path}", f"{found.path} is {error}; it is not read")
            return Cursor(found.path, found.kind, found.size, found.mtime_ns, ignored=str(error))
        except OSError as error:
            self._warn(f"open {found.path}", f"{procfs.Unreadable(found.path, error)}; its records are not "
                                             "reported until it can be read")
            return cursor
        keep = False
        try:
            if cursor is not None and cursor.ignored:
                cursor = None  # it was not a utmp file; now it is: read it as a new one
            if reused:
                start, before, head = cursor.offset, cursor.last, cursor.head  # type: ignore[union-attr]
            else:
                start, before, head = self._start(source, found, cursor, work)
            scan = files.scan(source.stream, start, work.budget, before)
            work.budget -= scan.examined
            last_time = self._interpret(scan, found, source.compression, work)
            keep = source.compression is not None and not scan.at_end
            self._note_problems(found, scan)
            if keep:
                self._keep(found.id, scan.end, source)
            previous_time = cursor.last_time if cursor is not None else None
            return Cursor(found.path, found.kind, found.size, found.mtime_ns, scan.end, head, scan.last,
                          last_time if last_time is not None else previous_time, source.compression,
                          pending=not scan.at_end)
        except files.DECOMPRESSION_ERRORS as error:  # OSError included: EIO, a file gone mid-read
            problem = str(procfs.Unreadable(found.path, error)) if isinstance(error, OSError) else \
                f"cannot read {found.path}: {type(error).__name__}: {error}"
            self._warn(f"read {found.path}", f"{problem}; its records are not reported until it can be read")
            return cursor
        finally:
            if not keep:
                source.close()

    def _open(self, found: Found, cursor: Cursor | None) -> tuple[Source, bool]:
        """The file opened; True when it is the compressed file a pass left open at the cursor's offset."""
        kept = self._kept
        if kept is not None and cursor is not None and kept[0] == found.id and kept[1] == cursor.offset \
                and (cursor.size, cursor.mtime_ns) == (found.size, found.mtime_ns):
            self._kept = None
            return kept[2], True
        self._close_kept(keep=False)
        return Source(found), False

    def _keep(self, file_id: str, offset: int, source: Source) -> None:
        self._close_kept(keep=False)
        self._kept = (file_id, offset, source)

    def _close_kept(self, keep: bool) -> None:
        if self._kept is not None and not keep:
            self._kept[2].close()
            self._kept = None

    def _start(self, source: Source, found: Found, cursor: Cursor | None, work: Pass) -> tuple[int, bytes, str]:
        """Where to read on in a file, the bytes just before it, and the digest of its first record; leaves the
        stream there.

        A known file whose bytes before its cursor are unchanged was appended to: read on. Otherwise (a new
        file, a rewritten one, or a new file in the place of one that went) find where the records already
        reported end: just after the last record reported from a file with the same first record (a copy, a
        compressed rotation, the same file edited), else after the records not newer than the last one
        reported from the file it replaces; a file with none of that is read from its start."""
        if cursor is not None:
            same_kind = (cursor.compression is None) == (source.compression is None)
            if same_kind and (source.compression is not None or found.size >= cursor.offset):
                before = source.read_at(cursor.offset - len(cursor.last), len(cursor.last))
                if before == cursor.last:
                    if cursor.head:
                        return cursor.offset, before, cursor.head
                    head = source.head()  # the file was empty when first seen
                    return cursor.offset, source.read_at(cursor.offset - len(before), len(before)), head
            if cursor.path != found.path:
                cursor = None  # the inode was reused by another file: a new one
        head = source.head()
        predecessor = cursor or work.gone.pop(found.path, None)
        copies = [each for each in work.lineages.get((found.kind, head), []) if head] if head else []
        best: tuple[int, Cursor] | None = None
        for lineage in [*copies, *([predecessor] if predecessor is not None else [])]:
            position = source.locate(lineage.last)
            if position is not None and (best is None or position > best[0]):
                best = (position, lineage)
        start = 0
        if best is not None:
            start, lineage = best
            if cursor is not None:
                self._warn(f"rewritten {found.path}", f"{found.path} was rewritten ({self._how(found, cursor)}); "
                           f"reading on after the last record already reported, at offset {start}", once=False)
            elif lineage.path != found.path:
                LOG.info("%s holds the records of %s (a copy or a compressed rotation); reading on after those "
                         "already reported, at offset %d", found.path, lineage.path, start)
        else:
            reference = predecessor or (copies[0] if copies else None)
            if reference is not None and reference.last_time is not None:
                start, skipped = source.first_newer(reference.last_time)
                if cursor is not None or skipped:
                    what = "rewritten" if cursor is not None else f"put in the place of {reference.path}" \
                        if reference is predecessor else f"a copy of {reference.path} without its last record"
                    how = f" ({self._how(found, cursor)})" if cursor is not None else ""
                    self._warn(f"rewritten {found.path}",
                               f"{found.path} was {what}{how}; the {skipped} records not newer than the last one "
                               f"reported from it are taken as already reported, reading on at offset {start}",
                               once=False)
        return start, source.read_at(max(0, start - utmp.RECORD_SIZE), min(start, utmp.RECORD_SIZE)), head

    @staticmethod
    def _how(found: Found, cursor: Cursor) -> str:
        if cursor.compression is None and found.size < cursor.offset:
            return f"truncated: now {found.size} bytes, {cursor.offset} had been read"
        return f"its content before offset {cursor.offset} changed"

    # -- records --------------------------------------------------------------------------------------------

    def _interpret(self, scan: files.Scan, found: Found, compression: str | None, work: Pass) -> float | None:
        """Turn the records read into events (updating the open sessions); the time of the last record."""
        horizon = self._horizon.get(found.id) if self._horizon is not None else None
        last_time: float | None = None
        unexpected: tuple[int, int] | None = None
        unexpected_count = 0
        for offset, raw in scan.records:
            record = utmp.parse(raw)
            if record.type == utmp.EMPTY:
                continue
            last_time = record.time
            startup = horizon is not None and (compression is not None or offset < horizon)
            if found.kind == WTMP:
                work.events += self._good(record, found.path, startup, work)
            elif record.type in (utmp.LOGIN_PROCESS, utmp.USER_PROCESS):
                session = self._session(record, work)
                work.events.append(user_event(FAILED_LOGIN, session, record.line, found.path, record.time, startup))
            else:
                unexpected_count += 1
                unexpected = unexpected or (offset, record.type)
        if unexpected is not None:
            self._warn(f"btmp type {found.path}",
                       f"{found.path}: skipped {unexpected_count} records of a type a bad-login file does not hold "
                       f"(first: {utmp.TYPE_NAMES[unexpected[1]]} at offset {unexpected[0]})", once=False)
        return last_time

    def _session(self, record: utmp.Utmp, work: Pass) -> Session:
        return Session(record.user, work.user_ids.get(record.user) if record.user else None, record.pid,
                       utmp.source_ip(record.address, record.host), record.host)

    def _good(self, record: utmp.Utmp, origin: str, startup: bool, work: Pass) -> list[Event]:
        """A wtmp record, as Auditbeat reads it (processGoodLoginRecord)."""
        tty = "" if record.line == "~" else record.line
        sessions = work.state.sessions
        if record.type == utmp.USER_PROCESS:
            session = self._session(record, work)
            sessions.pop(tty, None)
            sessions[tty] = session
            if len(sessions) > MAX_SESSIONS:
                forgotten = next(iter(sessions))
                del sessions[forgotten]
                self._warn("sessions", f"login: more than {MAX_SESSIONS} terminals have an open session; the "
                                       "oldest are forgotten (their logouts will not be reported)")
            return [user_event(USER_LOGIN, session, tty, origin, record.time, startup)]
        if record.type == utmp.DEAD_PROCESS:
            session = sessions.pop(tty, None)
            if session is None:
                return []  # the end of a getty or of a login process: not a session
            return [user_event(USER_LOGOUT, session, tty, origin, record.time, startup)]
        if record.type == utmp.RUN_LVL and (record.user == "shutdown" or chr(record.pid & 0xFF) in "06"):
            return self._ended(SHUTDOWN, "system shutdown", origin, record.time, startup, sessions)
        if record.type == utmp.BOOT_TIME and record.line == "~" and record.user == "reboot":
            return self._ended(BOOT, "system boot", origin, record.time, startup, sessions)
        return []

    @staticmethod
    def _ended(action: LoginAction, reason: str, origin: str, when: float, startup: bool,
               sessions: dict[str, Session]) -> list[Event]:
        """The sessions still open end with the host (a user_logout each, `event.reason` saying why), then the
        boot or shutdown event."""
        events = [user_event(USER_LOGOUT, session, tty, origin, when, startup, reason=reason)
                  for tty, session in sessions.items()]
        sessions.clear()
        return [*events, host_event(action, origin, when, startup)]

    # -- warnings -------------------------------------------------------------------------------------------

    def _note_problems(self, found: Found, scan: files.Scan) -> None:
        if scan.first_bad is not None:
            offset, reason = scan.first_bad
            self._warn(f"bad {found.path}", f"{found.path}: skipped {scan.skipped} bytes that are not utmp records "
                       f"from offset {offset} ({reason}); the records after them are read", once=False)
        if scan.error is not None:
            self._warn(f"error {found.path}", f"{found.path}: reading stopped at offset {scan.end} ({scan.error}); "
                       "the records up to there are reported, the rest when the file changes")
        key = (found.id, scan.end)
        if scan.tail:
            since = self._stalled_since.setdefault(key, time.monotonic())
            if time.monotonic() - since >= STALLED_TAIL_SECONDS:
                self._warn(f"tail {found.path}", f"{found.path}: the last {scan.tail} bytes (from offset "
                           f"{scan.end}) are not a whole record; waiting for the rest before reading them")
        for stale in [each for each in self._stalled_since if each[0] == found.id and each != key]:
            del self._stalled_since[stale]

    def _warn_unmatched(self, found: Iterable[Found]) -> None:
        kinds = {each.kind for each in found}
        for kind, pattern in self.patterns:
            if pattern and kind not in kinds:
                self._warn(f"none {kind}", f"login: no file matches {pattern} under {self.hostfs}; no "
                           f"{'logins, logouts, boots or shutdowns' if kind == WTMP else 'failed logins'} "
                           "can be reported until one does")
            else:
                self._warned.pop(f"none {kind}", None)

    def _warn(self, key: str, message: str, once: bool = True) -> None:
        """Log `message` once while it stays the same for `key` (every time when not `once`)."""
        if once and self._warned.get(key) == message:
            return
        self._warned[key] = message
        LOG.warning("%s", message)


def create(context: DatasetContext) -> LoginDataset:
    """Construct the login dataset (the registry in actors.datasets calls this)."""
    return LoginDataset(context)
