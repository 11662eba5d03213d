"""The process dataset: processes read from /proc, every exec from the kernel's process connector, their events."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict

from actors.hostfs import procfs
from actors.hostfs.outcome import Outcome
from actors.hostfs.procfs import (NANOS_PER_TICK, ProcStat, parse_cmdline, parse_status_ids, read_stat,
                                  status_values)
from actors.hostfs.etc_files import AccountNames
from actors.datasets import DatasetContext, dataset_options
from actors.ecs import EcsField
from actors.hostfs.host_facts import read_boot_id, read_boot_time
from actors.hostfs.entity import process_entity_id, process_start_iso
from actors.event import CHANGE, STATE, Event, iso_millis
from actors.datasets.process.exe_hash import (ECS_HASH_TYPES, HASH_TYPES, BackgroundHasher, ExecutableHasher, FileId,
                                              HashJob, HashResult)
from actors.datasets.process.capture import ExecReads, read_execs
from actors.datasets.process.proc_connector import ConnectorUnavailable, ProcConnector, ProcessExec, ProcessExit, pickled_as_tuple

if TYPE_CHECKING:
    from actors.datasets.process.options import ProcessOptions

DATASET = "process"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field).
FIELDS: frozenset[str] = frozenset({
    "process.pid", "process.name", "process.working_directory", "process.executable", "process.start",
    "process.entity_id", "process.args", "process.parent.pid", "process.exit_code", "process.end",
    *(f"process.hash.{name}" for name in ECS_HASH_TYPES),
    "process.thread.capabilities.effective", "process.thread.capabilities.permitted",
    "user.id", "user.name", "user.group.id", "user.group.name", "user.effective.id", "user.effective.group.id",
    "process.user.id", "process.group.id", "process.saved_user.id", "process.saved_group.id",
    "container.id", "error.message",
})
# Its own fields, with their types: the hashes ECS has no field for (the saved ids are ECS's process.saved_*).
AUDIT_FIELDS: Mapping[str, EcsField] = {
    f"system.audit.process.hash.{name}": EcsField("keyword", array=False)
    for name in HASH_TYPES if name not in ECS_HASH_TYPES
}
LOG = logging.getLogger("hostaudit.process")

EXISTING = "existing_process"
STARTED = "process_started"
STOPPED = "process_stopped"
ERROR = "process_error"
CHANGED_IMAGE = "process_changed_image"  # an exec by a process already reported (Auditbeat's kernel_tracing name)

SNAPSHOT_VERSION = 1
PF_KTHREAD = 0x00200000  # task flag in field 9 of /proc/PID/stat
KTHREADD_PID = 2
STREAM_EXIT_GRACE = 5.0  # seconds a vanished process waits for the connector's EXIT before a poll stops it
FULL_PASS_SECONDS = 60.0  # while the connector is healthy, a poll reads every /proc/PID/stat at most this often
# The most a poll, and a batch of connector notifications, waits in all for the hashes of the executables it
# found (they are hashed in a background thread). A hash not ready by then is added to the process when it is:
# its event goes out without it, later state reports and its stop carry it.
POLL_HASH_WAIT = 2.0
STREAM_HASH_WAIT = 0.25
STARTED_FIELDS_KEPT = 4096  # the ECS fields of streamed starts kept for their stops (made once per process)
EXITED_STATES = frozenset({"Z", "X"})  # zombie, dead: the process has exited, only its parent has not reaped it

# Capability bits 0..40 (linux/capability.h); a newer kernel's extra bits are named CAP_<n>.
CAPABILITY_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# A 64-hex container id as the last component of a cgroup path of docker, containerd, CRI-O, podman or
# Kubernetes: /docker/<id>, docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope,
# /kubepods/burstable/pod<uid>/<id> (podman may nest a /container cgroup under its scope).
CONTAINER_RUNTIMES = ("docker", "containerd", "crio", "libpod", "podman", "kubepods")
CONTAINER_ID = re.compile(r"(?:^|[/\-:])([0-9a-f]{64})(?:\.scope)?(?=/|$)")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """How ECS classifies one action, and the verb of its message."""

    kind: str
    category: tuple[str, ...]
    type: tuple[str, ...]
    verb: str


ACTIONS: Mapping[str, ActionSpec] = {
    EXISTING: ActionSpec(STATE, ("process",), ("info",), "is RUNNING"),
    STARTED: ActionSpec(CHANGE, ("process",), ("start",), "STARTED"),
    STOPPED: ActionSpec(CHANGE, ("process",), ("end",), "STOPPED"),
    ERROR: ActionSpec(CHANGE, ("process",), ("info",), ""),
    CHANGED_IMAGE: ActionSpec(CHANGE, ("process",), ("change",), "CHANGED IMAGE"),
}


class ProcessRecord(TypedDict, total=False):
    """One process in the snapshot: what its events need, JSON-ready and compact (absent keys are unknown)."""

    pid: int
    ppid: int
    ticks: int  # start time in clock ticks since boot (field 22 of /proc/PID/stat): with pid, the identity
    approx: bool  # ticks derived from the connector's fork/exec time because /proc could not be read in time
    start_ns: int  # start in ns since boot, exact, when the connector saw the fork (for event.duration)
    start: str  # process.start, ISO UTC millis
    name: str
    exe: str
    args: list[str]
    cwd: str
    uid: str
    gid: str
    euid: str  # the effective and saved ids: absent when equal to uid / gid
    egid: str
    suid: str
    sgid: str
    user: str
    group: str
    cap_eff: str  # capability masks in hex, as /proc shows them (names are derived when an event is built)
    cap_prm: str
    hash: dict[str, str]
    hash_error: str  # the exe could not be hashed: reported as error.message on a normal event
    container: str
    entity_id: str
    error: str  # the process could not be read: reported as process_error (Auditbeat's Error)
    awaiting_exit: bool  # a poll found it gone; kept a few seconds for the connector's EXIT (not in state reports)


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------

# Declared in options.py (ProcessOptions, parse_options), checked by the configuration at load.


# ---------------------------------------------------------------------------------------------------------
# Reading /proc/PID
# ---------------------------------------------------------------------------------------------------------

@pickled_as_tuple  # the connector's reader process sends these to the collector
@dataclass(frozen=True, slots=True)
class ProcessDetails:
    """What was read of one process. Files that were absent or denied leave their fields None."""

    pid: int
    stat: ProcStat
    exe: str | None = None
    exe_id: FileId | None = None  # identity of the executable file, for the hash cache
    args: tuple[str, ...] | None = None
    cwd: str | None = None
    ids: tuple[str, str, str, str, str, str] | None = None  # uid, euid, suid, gid, egid, sgid
    cap_effective: int = 0
    cap_permitted: int = 0
    container_id: str | None = None
    denied: tuple[str, ...] = ()  # files we were not allowed to read (not root)
    error: str = ""  # another read error: the process is reported as process_error
    vanished: bool = False  # the process exited while it was read


def parse_status(raw: bytes) -> tuple[tuple[str, str, str, str, str, str] | None, int, int]:
    """Return (uid, euid, suid, gid, egid, sgid) and the effective and permitted capability masks."""
    effective, permitted = status_values(raw, b"\nCapEff:"), status_values(raw, b"\nCapPrm:")
    return parse_status_ids(raw), int(effective[0], 16) if effective else 0, int(permitted[0], 16) if permitted else 0


def container_id(cgroup: str) -> str | None:
    """The container id in a /proc/PID/cgroup text (docker, containerd, CRI-O, podman, Kubernetes), or None."""
    if not any(runtime in cgroup for runtime in CONTAINER_RUNTIMES):  # the common case, and quick
        return None
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if not any(runtime in path for runtime in CONTAINER_RUNTIMES):
            continue
        matches = CONTAINER_ID.findall(path)
        if matches:
            return matches[-1]
    return None


def capability_names(mask: int) -> list[str]:
    """CAP_* names of the bits set in a capability mask, lowest bit first."""
    return list(_capability_names(mask))


@functools.lru_cache(maxsize=64)  # a host has a handful of distinct masks; every event of root spells out ~40
def _capability_names(mask: int) -> tuple[str, ...]:
    names = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            names.append(CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"CAP_{bit}")
        bit += 1
    return tuple(names)


def read_details(proc: str, pid: int, stat: ProcStat | None = None) -> ProcessDetails | None:
    """Read one process now (`proc` is "<hostfs>/proc/"); None when it is gone before anything is read.

    A file absent after another was read means the process exited while we read it (`vanished`); a zombie
    still has its stat and status, with an empty cmdline and no exe.
    """
    return details_of(proc, read_execs(proc, [pid], with_stat=stat is None)[0], stat)


def details_of(proc: str, reads: ExecReads, stat: ProcStat | None = None) -> ProcessDetails | None:
    """What the reads of a process under `proc` say (`stat` given when it was read before); None when its stat
    was gone or unreadable. A file that could not be read is named in `denied` (EACCES, EPERM) or `error`."""
    base = f"{proc}{reads.pid}/"
    denied: list[str] = []
    errors: list[str] = []

    def content(name: str, value: Any) -> Any:
        if isinstance(value, int):  # the errno that failed it
            error = procfs.Unreadable(base + name, OSError(value, os.strerror(value)))
            if error.outcome is Outcome.DENIED:
                denied.append(name)
            else:
                errors.append(str(error))
            return None
        return value

    exe, cmdline = content("exe", reads.exe), content("cmdline", reads.cmdline)
    if stat is None:
        raw = content("stat", reads.stat)
        stat = None if raw is None else procfs.parse_stat(raw)
        if stat is None:
            return None
    status, cwd, cgroup = content("status", reads.status), content("cwd", reads.cwd), content("cgroup", reads.cgroup)
    ids, effective, permitted = parse_status(status) if status else (None, 0, 0)
    return ProcessDetails(
        pid=reads.pid,
        stat=stat,
        exe=exe,
        exe_id=reads.exe_id if exe else None,
        args=None if cmdline is None else parse_cmdline(cmdline),
        cwd=cwd,
        ids=ids,
        cap_effective=effective,
        cap_permitted=permitted,
        container_id=None if cgroup is None else container_id(cgroup.decode("utf-8", "replace")),
        denied=tuple(denied),
        error="; ".join(errors),
        vanished=reads.cmdline is None or reads.status is None,  # absent (not failed) after stat was read
    )


def exec_details(item: ProcessExec) -> ProcessDetails | None:
    """What was read of an exec'd process, with the executable the kernel opened for the exec when /proc was too
    late for it (a zombie's exe link is gone)."""
    details = item.details
    if details is not None and not details.exe and item.exec_file is not None:
        return replace(details, exe=item.exec_file.path, exe_id=item.exec_file.identity)
    return details


def exec_image(item: ProcessExec) -> tuple[str, FileId] | None:
    """The executable of an exec'd process and its identity, from /proc or else from the exec's opens."""
    details = item.details
    if details is not None and details.exe and details.exe_id is not None:
        return details.exe, details.exe_id
    return None if item.exec_file is None else (item.exec_file.path, item.exec_file.identity)


@functools.lru_cache(maxsize=1024)  # asked for every exec: a host runs a few hundred distinct executables
def host_exe_path(hostfs: Path, executable: str) -> str:
    """An executable's path as seen under the host root."""
    return str(procfs.host_path(hostfs, executable))


def is_kernel_thread(details: ProcessDetails) -> bool:
    """Kernel threads: the PF_KTHREAD flag, kthreadd itself, or (as Auditbeat) uid 0 / a kthreadd child without
    an executable. A usermode helper that kthreadd started and that exec'd a program (modprobe, a core-dump
    pipe) has an executable and no PF_KTHREAD: it is a real process and is reported."""
    stat = details.stat
    if stat.flags & PF_KTHREAD or details.pid == KTHREADD_PID:
        return True
    if details.exe:
        return False
    return stat.ppid == KTHREADD_PID or (details.ids is not None and details.ids[0] == "0")


# ---------------------------------------------------------------------------------------------------------
# Events (pure functions of records)
# ---------------------------------------------------------------------------------------------------------

def put_hash(record: ProcessRecord, result: HashResult | None) -> None:
    """Record an executable's digests, or why it has none (reported as error.message); nothing for None (the file
    was gone before it could be hashed)."""
    if result is None:
        return
    if result.error:
        record["hash_error"] = (f"failed to hash executable {record.get('exe', '')} for PID {record['pid']}: "
                                f"{result.error}")
    else:
        record["hash"] = dict(result.digests)


def process_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ECS fields of a process record (user.*, container.id and error.message included)."""
    process: dict[str, Any] = {"pid": record["pid"]}
    for key, ecs_name in (("name", "name"), ("cwd", "working_directory"), ("exe", "executable"),
                          ("start", "start"), ("entity_id", "entity_id")):
        if record.get(key):
            process[ecs_name] = record[key]
    if record.get("args"):
        process["args"] = list(record["args"])
    if "ppid" in record:
        process["parent"] = {"pid": record["ppid"]}
    fields: dict[str, Any] = {"process": process}
    custom: dict[str, Any] = {}
    hashes = record.get("hash") or {}
    if ecs_hashes := {name: value for name, value in hashes.items() if name in ECS_HASH_TYPES}:
        process["hash"] = ecs_hashes
    if other_hashes := {name: value for name, value in hashes.items() if name not in ECS_HASH_TYPES}:
        # ECS 9.4 has process.hash.{md5,sha1,sha256,sha384,sha512} only; Auditbeat's other types go here.
        custom["hash"] = other_hashes
    capabilities = {name: capability_names(int(record[key], 16))
                    for key, name in (("cap_eff", "effective"), ("cap_prm", "permitted")) if record.get(key)}
    if capabilities := {name: names for name, names in capabilities.items() if names}:
        process["thread"] = {"capabilities": capabilities}
    user, effective, saved = _user_fields(record)
    if effective:
        user["effective"] = effective
    if user:
        fields["user"] = user
    # ECS's own process credentials: process.user / process.group are the effective ids, process.saved_user /
    # process.saved_group the saved ones (Auditbeat's user.saved.id / user.saved.group.id, not ECS fields).
    for ids, user_key, group_key in ((effective, "user", "group"), (saved, "saved_user", "saved_group")):
        if "id" in ids:
            process[user_key] = {"id": ids["id"]}
        if "group" in ids:
            process[group_key] = dict(ids["group"])
    if custom:
        fields["system"] = {"audit": {"process": custom}}
    if record.get("container"):
        fields["container"] = {"id": record["container"]}
    if message := "; ".join(record[key] for key in ("error", "hash_error") if record.get(key)):
        fields["error"] = {"message": message}
    return fields


def _user_fields(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """user.* (ids as strings, each only when known), the effective ids, and the saved ids."""
    user: dict[str, Any] = {}
    if record.get("uid"):
        user["id"] = record["uid"]
    if record.get("user"):
        user["name"] = record["user"]
    group = {key: record[source] for key, source in (("id", "gid"), ("name", "group")) if record.get(source)}
    if group:
        user["group"] = group
    return user, _ids(record, "euid", "egid"), _ids(record, "suid", "sgid")


def _ids(record: Mapping[str, Any], uid_key: str, gid_key: str) -> dict[str, Any]:
    """{"id": ..., "group": {"id": ...}} of the effective or saved ids (absent from a record: the real ones)."""
    ids: dict[str, Any] = {}
    if uid := record.get(uid_key, record.get("uid")):
        ids["id"] = uid
    if gid := record.get(gid_key, record.get("gid")):
        ids["group"] = {"id": gid}
    return ids


def display_name(record: Mapping[str, Any]) -> str:
    """The name a message shows: comm, else the executable's base name, else "(unknown)"."""
    return record.get("name") or os.path.basename(record.get("exe", "")) or "(unknown)"


def process_message(action: str, record: Mapping[str, Any]) -> str:
    """Auditbeat's makeMessage: "Process NAME (PID: N) by user USER VERB", or "ERROR for PID N: ERR"."""
    if action == ERROR:
        return f"ERROR for PID {record['pid']}: {record.get('error', '')}"
    user = f" by user {record['user']}" if record.get("user") else ""
    return f"Process {display_name(record)} (PID: {record['pid']}){user} {ACTIONS[action].verb}"


def process_event(action: str, record: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                  timestamp: float | None = None, fields: Mapping[str, Any] | None = None) -> Event:
    """One event of `action` for a process record; `extra` is merged into its fields (exit code, ...).
    `timestamp` (epoch seconds) is when it happened, when the kernel said so; else now. `fields`: the record's
    process_fields made already (for an earlier event of the same record; not changed here)."""
    spec = ACTIONS[action]
    fields = process_fields(record) if fields is None else dict(fields)
    for key, value in (extra or {}).items():
        fields[key] = {**fields.get(key, {}), **value}
    when = {} if timestamp is None else {"timestamp": timestamp}
    return Event(dataset=DATASET, action=action, kind=spec.kind, category=spec.category, type=spec.type,
                 message=process_message(action, record), fields=fields, **when)


def appeared_event(record: Mapping[str, Any], timestamp: float | None = None,
                   fields: Mapping[str, Any] | None = None) -> Event:
    """process_started, or process_error when the process could not be read (as Auditbeat)."""
    return process_event(ERROR if record.get("error") else STARTED, record, timestamp=timestamp, fields=fields)


def stopped_events(record: Mapping[str, Any], ended: ProcessExit | None = None,
                   fields: Mapping[str, Any] | None = None) -> list[Event]:
    """process_stopped for a record (none for one that was reported as process_error, as Auditbeat); with the
    connector's EXIT it carries process.exit_code, process.end and event.duration."""
    if record.get("error"):
        return []
    if ended is None:
        return [process_event(STOPPED, record)]
    start_ns = record.get("start_ns", record.get("ticks", 0) * NANOS_PER_TICK)
    extra = {"process": {"exit_code": ended.exit_code, "end": iso_millis(ended.time)},
             "event": {"duration": max(0, ended.boot_ns - start_ns)}}
    return [process_event(STOPPED, record, extra, timestamp=ended.time, fields=fields)]


def same_process(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Identity is (pid, start ticks); ticks derived from the connector's clock may be one tick off."""
    if old.get("ticks") == new.get("ticks"):
        return True
    if old.get("approx") or new.get("approx"):
        return abs(old.get("ticks", 0) - new.get("ticks", 0)) <= 1
    return False


def image_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The same process now runs another executable (both known)."""
    return bool(old.get("exe")) and bool(new.get("exe")) and old["exe"] != new["exe"]


def _processes(snapshot: Any) -> Mapping[str, Mapping[str, Any]] | None:
    if isinstance(snapshot, Mapping) and snapshot.get("version") == SNAPSHOT_VERSION:
        processes = snapshot.get("processes")
        if isinstance(processes, Mapping):
            return processes
    return None


def _is_own_proc(proc: str) -> bool:
    """Whether `proc` is this process's own /proc (its pid namespace's), not another mounted under hostfs."""
    try:
        return os.path.samefile(proc, "/proc")
    except OSError:
        return False


def process_changes(previous: Any, current: Any) -> list[Event]:
    """Events between two snapshots: stops first (a reused pid is a stop, then a start), then starts and
    image changes. After a reboot (another boot id) every previous process stopped."""
    old, new = _processes(previous), _processes(current)
    if old is None or new is None:
        if previous is not None:
            LOG.warning("process: ignoring a previous snapshot in an unknown format (%s)", type(previous).__name__)
        return []
    rebooted = previous.get("boot_id", "") != current.get("boot_id", "")
    events: list[Event] = []
    for pid, record in old.items():
        now = new.get(pid)
        if now is record and not rebooted:
            continue  # the very record a poll reused: nothing changed
        if rebooted or now is None or not same_process(record, now):
            events += stopped_events(record)
    for pid, record in new.items():
        before = old.get(pid)
        if before is record and not rebooted:
            continue
        if rebooted or before is None or not same_process(before, record):
            events.append(appeared_event(record))
        elif image_changed(before, record):
            events.append(process_event(CHANGED_IMAGE, record))
    return events


def state_events(current: Any) -> list[Event]:
    """existing_process for every process of the snapshot (process_error for those that could not be read)."""
    processes = _processes(current) or {}
    return [process_event(ERROR if record.get("error") else EXISTING, record) for record in processes.values()
            if not record.get("awaiting_exit")]


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------

class ProcessDataset:
    """The `process` dataset: a /proc scan per poll, and (backend auto/netlink) every exec and exit as it
    happens through the kernel's process connector.

    A process is identified by (pid, start ticks). The poll reads only /proc/PID/stat of processes it already
    knows; a new one is read in full and its executable hashed (once per distinct file).

    Fork without exec: a forked child that has not exec'd is reported by the next poll if still alive (as
    procfs alone would), not from the stream: forks of servers and shells are numerous and carry no new image.
    A stream exec or exit of a process is folded into the snapshot, so the poll does not report it again.
    A zombie has exited: the poll leaves it out, so a process seen alive is stopped when it becomes one.
    With the connector open, a process a poll finds gone is kept (out of state reports) for up to
    STREAM_EXIT_GRACE s, so that its stop comes from the connector's EXIT, with the exit code, even when the poll
    runs while that EXIT is still in the pipeline; the poll stops it only if the EXIT was lost.

    Hashing: an executable over hash.max_file_size (or unreadable) is reported on the normal started /
    existing event, without hash and with error.message; Auditbeat makes that a process_error, and then
    never reports the process's stop. process_error stays for processes whose /proc files cannot be read.
    Executables are hashed in a background thread (BackgroundHasher): a poll waits at most POLL_HASH_WAIT s,
    a batch of connector items STREAM_HASH_WAIT s, for the hashes it asked for; a process whose hash is not
    ready then is reported without it, and the hash is put into its record when ready (_attach_hashes), so
    later state reports and its stop carry it. A large executable never holds up the actor (nor, behind it,
    the kernel stream and the heartbeats) for longer than those waits.
    """

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)
        self.proc = str(procfs.host_path(self.hostfs, "/proc")) + "/"
        self.host_id = context.host_id
        self.options: ProcessOptions = dataset_options(context, "process")
        self.hasher = ExecutableHasher(self.options.hash) if self.options.hash.enabled else None
        self.hashing = BackgroundHasher(self.hasher) if self.hasher is not None else None
        self._hash_jobs: dict[str, tuple[int, str, HashJob]] = {}  # pid -> (ticks, exe, job) of records awaiting it
        self._asked: list[HashJob] = []  # hash jobs this observe / apply_stream asked for and has not waited for
        self.names = AccountNames(self.hostfs)  # from <hostfs>/etc/passwd and /etc/group, not NSS
        self.boot_id = read_boot_id(self.hostfs)
        self.boot_time = read_boot_time(self.hostfs)
        self._known: dict[str, ProcessRecord] = {}  # the last poll's records, reused while (pid, ticks) holds
        self._skipped: dict[str, ProcStat] = {}  # pid -> stat of kernel threads and vanished entries
        self._streaming = False  # the connector is open: it reports every exit, with its exit code
        self._connector: ProcConnector | None = None  # the open connector, whose lost() says when to read all again
        self._lost_seen = -1  # the connector's lost() at the last full pass
        self._full_pass_at = float("-inf")  # monotonic time of the last poll that read every stat
        self._last_pid_polled: int | None = None  # /proc/loadavg's last pid when the last poll listed /proc
        self._own_proc = _is_own_proc(self.proc)
        self._missing_since: dict[str, float] = {}  # pid -> when a poll first found a known process gone
        self._warned: set[str] = set()
        self._names_fresh = False  # the account files were looked at during this poll or batch
        self._started_fields: dict[str, tuple[ProcessRecord, dict[str, Any]]] = {}  # pid -> record, its fields

    # -- Dataset --------------------------------------------------------------------------------------------

    def observe(self) -> dict[str, Any]:
        """Scan /proc now: {"version", "boot_id", "processes": {pid: record}}. Never raises for a process."""
        self.names.refresh()
        self._names_fresh = True
        full = self._full_pass_due()
        last_pid = self._last_pid() if self._streaming and not full else None
        if last_pid is not None and last_pid == self._last_pid_polled and self._settled():
            return self._unchanged()  # no process could have appeared, and the connector reports every exit
        self._last_pid_polled = last_pid  # read before the listing: a process made after it is seen next time
        processes: dict[str, ProcessRecord] = {}
        skipped: dict[str, ProcStat] = {}
        try:
            entries = os.listdir(self.proc)
        except OSError as error:
            self._warn_once("listdir", "cannot list %s (%s): no processes are reported", self.proc,
                            error.strerror)
            entries = []
        for entry in entries:
            if not entry.isdigit():
                continue
            if not full and (entry in self._known or entry in self._skipped):
                known = self._known.get(entry)
                if known is None:
                    skipped[entry] = self._skipped[entry]
                    continue
                if known.get("name") is not None and not known.get("awaiting_exit"):  # read from /proc, alive
                    processes[entry] = known
                    continue
            stat = read_stat(self.proc + entry)
            if stat is None:
                continue  # gone
            if stat.flags & PF_KTHREAD or entry == "2" or stat.state in EXITED_STATES:
                skipped[entry] = stat  # a kernel thread, or exited (a zombie's exit is reported as its stop)
                continue
            record = self._known.get(entry)
            if record is not None and record.get("ticks") == stat.start_ticks and record.get("name") == stat.comm:
                processes[entry] = record
            elif self._skipped.get(entry) == stat:  # the same kernel thread or zombie as last time
                skipped[entry] = stat
            elif (record := self._read_new(int(entry), stat)) is not None:
                processes[entry] = record
            else:
                skipped[entry] = stat
        if self._streaming:
            processes.update(self._awaiting_exit(processes))
        self._await_hashes(POLL_HASH_WAIT)
        self._attach_hashes(processes)
        self._known, self._skipped = dict(processes), skipped
        return {"version": SNAPSHOT_VERSION, "boot_id": self.boot_id, "processes": processes}

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """process_stopped / process_started (process_error) / process_changed_image between two snapshots."""
        return process_changes(previous, current)

    def state_report(self, current: Any) -> Sequence[Event]:
        return state_events(current)

    # -- StreamingDataset -----------------------------------------------------------------------------------

    def open_stream(self) -> ProcConnector | None:
        """Subscribe to the process connector (backend auto/netlink). With auto, None and one warning when it
        cannot be opened; with netlink, ConnectorUnavailable naming the setting."""
        if self.options.backend == "procfs":
            return None
        # The exec opens name files in this process's mount namespace: of use when it is the host's (no hostfs).
        connector = ProcConnector(self.proc, self.exec_details_of, exec_files=self.hostfs == Path("/"))
        try:
            connector.open()
            self._streaming = True
            self._connector = connector
            return connector
        except ConnectorUnavailable as error:
            if self.options.backend == "netlink":
                raise ConnectorUnavailable(f"process.backend is netlink, but {error}. Run as root on the host, "
                                           "or set process.backend: auto (or procfs) to poll /proc") from None
            LOG.warning("process: %s; polling /proc every period instead, so processes that live less than a "
                        "period are missed (set process.backend: procfs to choose this and silence the warning)",
                        error)
            return None

    def exec_details_of(self, reads: ExecReads) -> ProcessDetails | None:
        """The connector's parse of what it read of a process that has just exec'd (runs in the connector's
        reader, so it touches no dataset state)."""
        return details_of(self.proc, reads)

    def apply_stream(self, snapshot: Any, items: Sequence[Any]) -> tuple[Any, Sequence[Event]]:
        """Fold connector items into the committed snapshot. Before the first poll (no snapshot) items are
        dropped: the first poll reports everything alive as state."""
        processes = _processes(snapshot)
        if processes is None:
            return snapshot, []
        processes = dict(processes)
        events: list[Event] = []
        # The account files are looked at again only when an id has no name (AccountNames rechecks them once a
        # second anyway): re-indexing /etc/passwd and /etc/group for every batch was a third of a batch's cost.
        self._names_fresh = False
        self._prefetch_hashes(items)
        self._attach_hashes(processes)  # before the stops: a hash finished since is on the stop event
        for item in items:
            if isinstance(item, ProcessExec):
                events += self._apply_exec(processes, item)
            elif isinstance(item, ProcessExit):
                events += self._apply_exit(processes, item)
        self._asked.clear()  # waited for in _prefetch_hashes
        self._attach_hashes(processes)
        return {**snapshot, "processes": processes}, events

    def close(self) -> None:
        """Stop the hashing thread."""
        if self.hashing is not None:
            self.hashing.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _apply_exec(self, processes: dict[str, Any], item: ProcessExec) -> list[Event]:
        key = str(item.pid)
        old = processes.get(key)
        record = self._exec_record(item, old)
        if record is None:
            return []
        events: list[Event] = []
        if old is not None and same_process(old, record):
            if not record.get("exe") or (old.get("exe"), old.get("args")) == (record["exe"], record.get("args")):
                return []  # a late item for an image the poll already saw, or a new image we could not read
            processes[key] = self._known[key] = record
            return [process_event(CHANGED_IMAGE, record, timestamp=item.time)]
        if old is not None:  # the pid was reused and its exit is lost (ENOBUFS)
            events += stopped_events(old)
        processes[key] = self._known[key] = record
        fields = process_fields(record)
        if len(self._started_fields) >= STARTED_FIELDS_KEPT:  # processes whose EXIT never came (lost, or polled)
            self._started_fields.clear()
        self._started_fields[key] = (record, fields)
        events.append(appeared_event(record, timestamp=item.time, fields=fields))
        return events

    def _apply_exit(self, processes: dict[str, Any], item: ProcessExit) -> list[Event]:
        record = processes.pop(str(item.pid), None)
        if record is None:  # never reported (a fork that did not exec nor live to a poll), or already stopped
            return []
        self._known.pop(str(item.pid), None)
        started = self._started_fields.pop(str(item.pid), None)
        # Its start's fields serve its stop while the record is the same object (records are replaced, never
        # changed: a hash attached since makes a new one, whose fields are made anew).
        return stopped_events(record, item, fields=started[1] if started and started[0] is record else None)

    def _exec_record(self, item: ProcessExec, old: Mapping[str, Any] | None) -> ProcessRecord | None:
        """The record of an exec'd process from what was read at once; from the kernel's times alone when
        /proc was too late. None for an exec we can say nothing new about."""
        details = exec_details(item)
        if details is not None and details.stat.flags & PF_KTHREAD:
            return None  # only kernel threads are left out: an exec'd process is real even if already a zombie
        if details is not None:
            record = self._record(details, start_ns=self._fork_time(item, details.stat.start_ticks))
            if record["ppid"] == 0 and item.ppid:  # /proc read as the process died: the kernel then shows 0
                record["ppid"] = item.ppid
            return record
        if old is not None and item.fork_boot_ns is None:
            return None  # an exec by a known process that exited before we could read its new image
        start_ns = item.fork_boot_ns if item.fork_boot_ns is not None else item.boot_ns
        ticks = start_ns // NANOS_PER_TICK
        record: ProcessRecord = {"pid": item.pid, "ticks": ticks, "approx": True, "start_ns": start_ns}
        if item.ppid is not None:
            record["ppid"] = item.ppid
        self._add_identity(record)
        if item.exec_file is not None:  # gone before /proc was read: the file the kernel opened for its exec
            record["exe"] = item.exec_file.path
            self._add_hash(record, item.pid, item.exec_file.path, item.exec_file.identity)
        return record

    @staticmethod
    def _fork_time(item: ProcessExec, ticks: int) -> int | None:
        """The exact fork time when the connector saw the fork of this very process (same tick)."""
        if item.fork_boot_ns is not None and abs(item.fork_boot_ns // NANOS_PER_TICK - ticks) <= 1:
            return item.fork_boot_ns
        return None

    def _awaiting_exit(self, alive: Mapping[str, ProcessRecord]) -> dict[str, ProcessRecord]:
        """Known processes this poll did not find, kept for STREAM_EXIT_GRACE s: the connector's EXIT, with the
        exit code, may still be on its way through the pipeline (a poll that ran first would report the stop
        without it, and the EXIT would then find nothing to stop). Past the grace the EXIT is taken as lost."""
        now = time.monotonic()
        waiting: dict[str, ProcessRecord] = {}
        since: dict[str, float] = {}
        for pid, record in self._known.items():
            if pid in alive:
                continue
            first = since[pid] = self._missing_since.get(pid, now)
            if now - first < STREAM_EXIT_GRACE:
                waiting[pid] = record if record.get("awaiting_exit") else {**record, "awaiting_exit": True}
        self._missing_since = {pid: first for pid, first in since.items() if pid in waiting}
        return waiting

    def _last_pid(self) -> int | None:
        """The pid the kernel handed out last (any process or thread), from /proc/loadavg; None when it cannot be
        read, or when `hostfs` is another pid namespace's /proc (the file shows this process's namespace)."""
        if not self._own_proc:
            return None
        try:
            with open(self.proc + "loadavg", "rb") as file:
                return int(file.read().split()[-1])
        except (OSError, ValueError, IndexError):
            return None

    def _settled(self) -> bool:
        """No known process waits for its exit or for a read of its /proc (records the poll would revisit)."""
        return not any(record.get("awaiting_exit") or record.get("name") is None for record in self._known.values())

    def _unchanged(self) -> dict[str, Any]:
        """The poll of a host where no pid was handed out since the last one: the processes known (the connector's
        execs and exits applied), with the hashes finished since."""
        processes = dict(self._known)
        self._await_hashes(POLL_HASH_WAIT)
        self._attach_hashes(processes)
        self._known = dict(processes)
        return {"version": SNAPSHOT_VERSION, "boot_id": self.boot_id, "processes": processes}

    def _full_pass_due(self) -> bool:
        """Whether this poll reads every pid's stat: always without the connector; with it, every
        FULL_PASS_SECONDS and when it lost notifications (else it reads only pids it has not seen)."""
        now = time.monotonic()
        lost = self._connector.lost() if self._connector is not None else -1
        if self._connector is not None and lost == self._lost_seen and now - self._full_pass_at < FULL_PASS_SECONDS:
            return False
        self._lost_seen, self._full_pass_at = lost, now
        return True

    def _read_new(self, pid: int, stat: ProcStat) -> ProcessRecord | None:
        """Read a process the poll has not seen; None when it vanished or is a kernel thread."""
        details = read_details(self.proc, pid, stat)
        if details is None or details.vanished or is_kernel_thread(details):
            return None
        return self._record(details)

    def _record(self, details: ProcessDetails, start_ns: int | None = None) -> ProcessRecord:
        stat = details.stat
        record: ProcessRecord = {"pid": details.pid, "ppid": stat.ppid, "ticks": stat.start_ticks, "name": stat.comm}
        if start_ns is not None:
            record["start_ns"] = start_ns
        self._add_identity(record)
        if details.exe:
            record["exe"] = details.exe
        if details.args is not None:
            record["args"] = list(details.args)
        if details.cwd:
            record["cwd"] = details.cwd
        if details.ids is not None:
            self._add_user(record, details.ids)
        if details.cap_effective:
            record["cap_eff"] = f"{details.cap_effective:x}"
        if details.cap_permitted:
            record["cap_prm"] = f"{details.cap_permitted:x}"
        if details.container_id:
            record["container"] = details.container_id
        if details.denied and os.geteuid() != 0:  # root is refused only mid-exec: nothing to advise
            self._warn_once("denied", "process: cannot read %s of some processes (permission denied); those "
                            "fields are left out. Run hostaudit as root to see every process in full.",
                            ", ".join(details.denied))
        if details.error:
            record["error"] = f"failed to load process information for PID {details.pid}: {details.error}"
        self._add_hash(record, details.pid, details.exe, details.exe_id)
        return record

    def _add_identity(self, record: ProcessRecord) -> None:
        if self.boot_time is not None:
            record["start"] = process_start_iso(self.boot_time, record["ticks"])
        if self.host_id:
            record["entity_id"] = process_entity_id(self.host_id, record["pid"], record["ticks"])

    def _add_user(self, record: ProcessRecord, ids: tuple[str, str, str, str, str, str]) -> None:
        uid, euid, suid, gid, egid, sgid = ids
        record.update(uid=uid, gid=gid)
        # The effective and saved ids are kept only when they differ from the real ones (compact snapshots).
        if euid != uid:
            record["euid"] = euid
        if suid != uid:
            record["suid"] = suid
        if egid != gid:
            record["egid"] = egid
        if sgid != gid:
            record["sgid"] = sgid
        user, group = self.names.user(uid), self.names.group(gid)
        if (user is None or group is None) and not self._names_fresh:  # an account added since the last look?
            self.names.refresh()
            self._names_fresh = True
            user, group = self.names.user(uid), self.names.group(gid)
        if user is not None:
            record["user"] = user
        if group is not None:
            record["group"] = group

    def _add_hash(self, record: ProcessRecord, pid: int, exe: str | None, exe_id: FileId | None) -> None:
        """Put the executable's hash (or why it has none) into a new record when it is known already; else ask the
        hashing thread for it, and the record waits for it (see _attach_hashes)."""
        key = str(pid)
        self._hash_jobs.pop(key, None)  # a new record of this pid: what an older one waited for is not its hash
        job = self._request_hash(pid, exe, exe_id)
        if job is None:
            return
        if job.done:
            put_hash(record, job.result)
            return
        self._hash_jobs[key] = (record["ticks"], exe or "", job)
        self._asked.append(job)

    def _request_hash(self, pid: int, exe: str | None, exe_id: FileId | None) -> HashJob | None:
        """Ask the hashing thread for the executable of a process just read: through /proc/PID/exe (the very file,
        in any mount namespace, even deleted), else the path on the host when it is still the same file. None
        when hashing is off, there is no executable, or too many files wait already."""
        if self.hashing is None or not exe or exe_id is None:
            return None
        paths = [f"{self.proc}{pid}/exe"]
        if not exe.endswith(" (deleted)"):
            paths.append(host_exe_path(self.hostfs, exe))
        job = self.hashing.request(exe_id, paths)
        if job is None:
            self._warn_once("hash-queue", "process: %d executables wait to be hashed already; new ones are reported "
                            "without hash until the queue shortens", self.hashing.max_jobs)
        return job

    def _prefetch_hashes(self, items: Sequence[Any]) -> None:
        """Ask for the hashes of every executable a batch of connector items exec'd, and wait for them (bounded),
        before any of their events is made."""
        if self.hashing is None:
            return
        for item in items:
            if isinstance(item, ProcessExec) and (image := exec_image(item)) is not None:
                job = self._request_hash(item.pid, *image)
                if job is not None and not job.done:
                    self._asked.append(job)
        self._await_hashes(STREAM_HASH_WAIT)

    def _await_hashes(self, budget: float) -> None:
        """Wait up to `budget` seconds in all for the hash jobs asked for since the last wait. A job that outlasts
        a whole budget (a large file) is not waited for again: its records get their hash when it is ready."""
        asked = [job for job in dict.fromkeys(self._asked) if not job.waited_out]
        self._asked.clear()
        if self.hashing is None or not asked or self.hashing.wait(asked, budget):
            return
        for job in asked:
            if not job.done:
                job.waited_out = True

    def _attach_hashes(self, processes: dict[str, Any]) -> None:
        """Put the hashes finished since into the records that wait for them, in `processes` and in the records
        the poll reuses. Records may be shared with the committed snapshot: each is replaced, never changed."""
        for key, (ticks, exe, job) in list(self._hash_jobs.items()):
            if not job.done:
                continue
            del self._hash_jobs[key]
            filled: dict[int, ProcessRecord] = {}  # id(record) -> its copy with the hash
            for records in (processes, self._known):
                record = records.get(key)
                if record is None or record.get("ticks") != ticks or record.get("exe", "") != exe:
                    continue  # gone, or another process (or image) by now
                if id(record) not in filled:
                    copy: ProcessRecord = {**record}  # type: ignore[typeddict-item]
                    put_hash(copy, job.result)
                    filled[id(record)] = copy
                records[key] = filled[id(record)]

    def _warn_once(self, topic: str, message: str, *args: Any) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            LOG.warning(message, *args)


def create(context: DatasetContext) -> ProcessDataset:
    """Construct the process dataset (the registry in actors.datasets calls this)."""
    return ProcessDataset(context)
