"""The host dataset: what this host is (identity, OS, boot, network), its state event and its change events."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from actors.hostfs.host_facts import NANOS_PER_SECOND, ecs_host, observe_host, without_empty
from actors.datasets import DatasetContext
from actors.ecs import EcsField
from actors.event import CHANGE, STATE, Event, iso_millis

DATASET = "host"
# Dotted ECS fields its events can carry besides the common ones (actors.datasets.is_common_field): none, the
# host dataset's fields are all under host.* and system.audit.host.*.
FIELDS: frozenset[str] = frozenset()
_KEYWORD, _KEYWORDS = EcsField("keyword", array=False), EcsField("keyword", array=True)
# Its own fields (Auditbeat's host/_meta/fields.yml), with their types: what the index template maps.
AUDIT_FIELDS: Mapping[str, EcsField] = {
    "system.audit.host.uptime": EcsField("long", array=False),  # nanoseconds
    "system.audit.host.boottime": EcsField("date", array=False),
    "system.audit.host.containerized": EcsField("boolean", array=False),
    "system.audit.host.timezone.name": _KEYWORD,
    "system.audit.host.timezone.offset.sec": EcsField("long", array=False),
    "system.audit.host.hostname": _KEYWORD,
    "system.audit.host.id": _KEYWORD,
    "system.audit.host.architecture": _KEYWORD,
    **{f"system.audit.host.os.{key}": _KEYWORD
       for key in ("platform", "name", "family", "version", "kernel", "codename", "type")},
    "system.audit.host.ip": EcsField("ip", array=True),
    "system.audit.host.mac": _KEYWORDS,
    "system.audit.host.new_id": _KEYWORD,  # host_id_changed only
    "system.audit.host.old_id": _KEYWORD,
}
LOG = logging.getLogger("hostaudit.host")
MINUTES_PER_DAY = 24 * 60


# ---------------------------------------------------------------------------------------------------------
# ECS mapping of a host snapshot (read by actors.hostfs.host_facts)
# ---------------------------------------------------------------------------------------------------------

def audit_host_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Return `system.audit.host.*` for a snapshot, field for field as Auditbeat's Host.toMapStr()."""
    os_info = snapshot.get("os", {})
    timezone = snapshot.get("timezone", {})
    boot_time = snapshot.get("boottime")
    return without_empty(
        {
            "uptime": snapshot.get("uptime_ns"),  # nanoseconds, like a Go time.Duration
            "boottime": iso_millis(boot_time) if boot_time is not None else None,
            # Auditbeat puts literal dotted keys "timezone.name" / "timezone.offset.sec" in this map. We nest
            # them instead: same field names once flattened, and no key with a dot inside in our documents.
            "timezone": {"name": timezone.get("name"), "offset": {"sec": timezone.get("offset_sec")}},
            "hostname": snapshot.get("hostname"),
            "id": snapshot.get("id"),
            "architecture": snapshot.get("architecture"),
            "os": {key: os_info.get(key)
                   for key in ("platform", "name", "family", "version", "kernel", "codename", "type")},
            "ip": list(snapshot.get("ip", [])),
            "mac": list(snapshot.get("mac", [])),
            "containerized": snapshot.get("containerized"),
        }
    )


def host_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Return an event's own fields: the root ECS `host.*` (with uptime in seconds) and `system.audit.host.*`."""
    host = ecs_host(snapshot)
    uptime_ns = snapshot.get("uptime_ns")
    if uptime_ns is not None:
        host["uptime"] = uptime_ns // NANOS_PER_SECOND
    return {"host": host, "system": {"audit": {"host": audit_host_fields(snapshot)}}}


# ---------------------------------------------------------------------------------------------------------
# Messages and events
# ---------------------------------------------------------------------------------------------------------

def _inflect(noun: str, count: int) -> str:
    return noun if count == 1 else noun + "s"


def format_uptime(uptime_ns: int) -> str:
    """Return Auditbeat's fmtDuration: "0 days, 5 hours, 11 minutes" (singular when exactly 1)."""
    total_minutes = max(0, uptime_ns) // (60 * NANOS_PER_SECOND)
    days, remaining = divmod(total_minutes, MINUTES_PER_DAY)
    hours, minutes = divmod(remaining, 60)
    return (f"{days} {_inflect('day', days)}, {hours} {_inflect('hour', hours)}, "
            f"{minutes} {_inflect('minute', minutes)}")


@dataclass(frozen=True)
class HostAction:
    """One `event.action` of the dataset: how ECS classifies it and its message template."""

    name: str
    kind: str
    type: str
    message: str  # str.format template with {host} = "<hostname> (IP: <first IP>)", {os_name}, {uptime}


HOST = HostAction("host", STATE, "info", "{os_name} host {host} is up for {uptime}")
HOST_ID_CHANGED = HostAction("host_id_changed", CHANGE, "change", "ID of host {host} has changed")
REBOOT = HostAction("reboot", CHANGE, "start", "Host {host} restarted")
HOSTNAME_CHANGED = HostAction("hostname_changed", CHANGE, "change", "Hostname changed to {host}")
HOST_CHANGED = HostAction("host_changed", CHANGE, "change", "Host {host} changed")


def host_message(snapshot: Mapping[str, Any], action: HostAction) -> str:
    """Return Auditbeat's message for `action` on this host (the first IP is the first IPv4 if any)."""
    ips = snapshot.get("ip", [])
    host = f"{snapshot.get('hostname', '')} (IP: {ips[0] if ips else ''})"
    return action.message.format(
        host=host,
        os_name=snapshot.get("os", {}).get("name", ""),
        uptime=format_uptime(snapshot.get("uptime_ns", 0)),
    )


def host_event(
    snapshot: Mapping[str, Any],
    action: HostAction,
    audit_extra: Mapping[str, Any] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> Event:
    """Return the event for `action` describing `snapshot`, with extra `system.audit.host` keys and `changes`."""
    fields = host_fields(snapshot)
    audit = fields["system"]["audit"]
    audit["host"].update(without_empty(dict(audit_extra or {})))
    if changes:
        audit["changes"] = dict(changes)
    return Event(
        dataset=DATASET,
        action=action.name,
        kind=action.kind,
        category=("host",),
        type=(action.type,),
        message=host_message(snapshot, action),
        fields=fields,
    )


# ---------------------------------------------------------------------------------------------------------
# Change detection (Auditbeat reportChanges, plus IP and MAC changes)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackedField:
    """A document field whose change we report: its ECS name, where it sits in a snapshot, how it is emitted."""

    name: str
    path: tuple[str, ...]
    render: Callable[[Any], Any] = lambda value: value

    def raw(self, snapshot: Mapping[str, Any]) -> Any:
        value: Any = snapshot
        for key in self.path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    def value(self, snapshot: Mapping[str, Any]) -> Any:
        raw = self.raw(snapshot)
        return None if raw is None else self.render(raw)


ID_FIELDS = (TrackedField("host.id", ("id",)),)
HOSTNAME_FIELDS = (TrackedField("host.hostname", ("hostname",)), TrackedField("host.name", ("hostname",)))
REBOOT_FIELDS = (
    TrackedField("system.audit.host.boottime", ("boottime",), iso_millis),
    TrackedField("host.boot.id", ("boot_id",)),
)
# Auditbeat's changeDetectionHash inputs, in its order, then the IP and MAC lists it ignores.
HOST_CHANGE_FIELDS = (
    TrackedField("system.audit.host.containerized", ("containerized",)),
    TrackedField("system.audit.host.timezone.name", ("timezone", "name")),
    TrackedField("system.audit.host.timezone.offset.sec", ("timezone", "offset_sec")),
    TrackedField("host.architecture", ("architecture",)),
    TrackedField("host.os.platform", ("os", "platform")),
    TrackedField("host.os.name", ("os", "name")),
    TrackedField("host.os.family", ("os", "family")),
    TrackedField("host.os.version", ("os", "version")),
    TrackedField("host.os.kernel", ("os", "kernel")),
    TrackedField("host.ip", ("ip",)),
    TrackedField("host.mac", ("mac",)),
)


def _same(before: Any, after: Any) -> bool:
    """Compare two snapshot values; lists compare as multisets, so a reordering of interfaces is no change."""
    if isinstance(before, list) and isinstance(after, list):
        return sorted(map(str, before)) == sorted(map(str, after))
    return before == after


def _put_dotted(target: dict[str, Any], dotted_name: str, value: Any) -> None:
    *parents, leaf = dotted_name.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def describe_changes(
    previous: Mapping[str, Any], fields: Sequence[TrackedField]
) -> dict[str, Any]:
    """Return `system.audit.changes`: the changed field names and, nested the same way, their old values.

    A field listed in `fields` but absent from `previous` had no value before.
    """
    old_values: dict[str, Any] = {}
    for field in fields:
        old_value = field.value(previous)
        if old_value not in (None, "", []):
            _put_dotted(old_values, field.name, old_value)
    return {"fields": [field.name for field in fields], "previous": old_values}


def _changed_fields(
    previous: Mapping[str, Any], current: Mapping[str, Any], fields: Sequence[TrackedField]
) -> list[TrackedField]:
    return [field for field in fields if not _same(field.raw(previous), field.raw(current))]


def _rebooted(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[TrackedField]:
    """Return the fields showing a reboot: boot time later by more than 1 s (Auditbeat), or a new boot id.

    The boot id also catches a reboot after which the clock runs behind, which the boot time alone misses.
    """
    before, after = previous.get("boottime"), current.get("boottime")
    later_boot = isinstance(before, (int, float)) and isinstance(after, (int, float)) and after > before + 1
    old_boot, new_boot = previous.get("boot_id"), current.get("boot_id")
    new_boot_id = bool(old_boot and new_boot and old_boot != new_boot)
    if not (later_boot or new_boot_id):
        return []
    return _changed_fields(previous, current, REBOOT_FIELDS)


def host_changes(previous: Any, current: Mapping[str, Any], at_startup: bool) -> list[Event]:
    """Return the change events between two snapshots, in Auditbeat's order; none on a first run."""
    if previous is None:
        return []
    if not isinstance(previous, Mapping):
        LOG.warning("Ignoring a previous host snapshot that is not a mapping (%s)", type(previous).__name__)
        return []
    events: list[Event] = []
    if previous.get("id", "") != current.get("id", ""):
        # Two events, as Auditbeat: the old host pointing to its new id, the new host pointing to its old id.
        changes = describe_changes(previous, ID_FIELDS)
        events.append(host_event(previous, HOST_ID_CHANGED, {"new_id": current.get("id")}, changes))
        events.append(host_event(current, HOST_ID_CHANGED, {"old_id": previous.get("id")}, changes))
    if reboot_fields := _rebooted(previous, current):
        events.append(host_event(current, REBOOT, changes=describe_changes(previous, reboot_fields)))
    if previous.get("hostname", "") != current.get("hostname", ""):
        changes = describe_changes(previous, HOSTNAME_FIELDS)
        events.append(host_event(current, HOSTNAME_CHANGED, changes=changes))
    if changed := _changed_fields(previous, current, HOST_CHANGE_FIELDS):
        events.append(host_event(current, HOST_CHANGED, changes=describe_changes(previous, changed)))
    return events


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------

class HostDataset:
    """The `host` dataset: one snapshot of the host per poll, a `host` state event, and change events."""

    name = DATASET

    def __init__(self, context: DatasetContext) -> None:
        self.hostfs = Path(context.hostfs)

    def observe(self) -> dict[str, Any]:
        """Read the host now (files under hostfs, interfaces of the live network namespace); never raises."""
        return observe_host(self.hostfs)

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """Return reboot / host_id_changed / hostname_changed / host_changed events, in Auditbeat's order."""
        return host_changes(previous, current, at_startup)

    def state_report(self, current: Any) -> Sequence[Event]:
        """Return the one `host` state event for the snapshot."""
        return [host_event(current, HOST)]


def create(context: DatasetContext) -> HostDataset:
    """Construct the host dataset (the registry in actors.datasets calls this)."""
    return HostDataset(context)
