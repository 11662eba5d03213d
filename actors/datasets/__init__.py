"""The dataset contract every collector runs, and the registry of the datasets that are built."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, NoReturn, Protocol, Sequence

from actors.ecs import EcsField, FieldTable, with_custom_fields
from actors.event import Event

# Dataset name -> module under actors.datasets. Adding a dataset touches its module and this line.
BUILT_DATASETS: dict[str, str] = {
    "host": "actors.datasets.host.dataset",
    "login": "actors.datasets.login.dataset",
    "package": "actors.datasets.package.dataset",
    "process": "actors.datasets.process.dataset",
    "socket": "actors.datasets.socket.dataset",
    "user": "actors.datasets.user.dataset",
}
# Datasets of the Auditbeat System module that hostaudit knows of but has not built yet.
PLANNED_DATASETS: tuple[str, ...] = ()


class CheckedOptions(SimpleNamespace):
    """A dataset's options as the configuration checked them, as read-only attributes (`options.hash.enabled`).

    The agent's processes run on these, not on the pydantic models they were checked with: a collector then never
    imports pydantic, which would cost the agent about 13 MiB (bench_memory)."""

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"options are read-only: {name}")


def checked_options(model: Any) -> CheckedOptions:
    """A checked options model (pydantic, from the configuration) as CheckedOptions, nested models too."""
    values = {name: getattr(model, name) for name in type(model).model_fields}
    return CheckedOptions(**{name: checked_options(value) if hasattr(type(value), "model_fields") else value
                             for name, value in values.items()})


@dataclass(frozen=True)
class DatasetContext:
    """What a dataset may know of its surroundings: where the host's files are and its own options."""

    hostfs: Path
    # Raw (e.g. {"detect_password_changes": True}: parsed by the dataset) or, in the agent, already checked.
    options: Mapping[str, Any] | CheckedOptions = field(default_factory=dict)
    host_id: str = ""  # the host's machine-id, for entity ids
    digest_key: bytes = b""  # a random per-install key (kept 0600 in path.data) for keyed digests of secrets


def dataset_options(context: DatasetContext, dataset: str) -> Any:
    """The options of `dataset`: as the configuration checked them (the agent), else parsed now from the raw
    mapping by the dataset's `options.parse_options` (tests, tools: this imports pydantic)."""
    if isinstance(context.options, CheckedOptions):
        return context.options
    return importlib.import_module(f"actors.datasets.{dataset}.options").parse_options(context.options)


class Dataset(Protocol):
    """A dataset observes one aspect of the host and turns differences between observations into events.

    It knows nothing of actors, processes, spools or outputs. Snapshots are JSON-serialisable values so the
    runtime can persist the last committed one and diff against it after a restart.
    """

    name: str

    def observe(self) -> Any:
        """Read the host now and return a snapshot."""

    def diff(self, previous: Any, current: Any, at_startup: bool) -> Sequence[Event]:
        """Return change events between two snapshots (`previous` is None on a first run).

        `at_startup` is True when `previous` was committed by an earlier run of the agent: the events then
        describe what changed while the agent was down and are marked as detected at startup.
        """

    def state_report(self, current: Any) -> Sequence[Event]:
        """Return the full state events (`event.kind: state`) for a snapshot."""


class Stream(Protocol):
    """Kernel notifications a dataset subscribes to (process connector, sock_diag destroy groups).

    The runtime calls `read` in a dedicated thread and hands each batch to the collector actor, waiting until
    the actor has spooled it before reading more: a slow pipeline leaves the backlog in the kernel's socket
    buffer, bounded, and `lost()` counts what the kernel dropped (ENOBUFS).
    """

    def read(self, timeout: float) -> list[Any]:
        """Block up to `timeout` seconds; return the notifications received, already enriched (e.g. a new
        process's exe and args, read at once before the process can exit). [] on timeout."""

    def lost(self) -> int:
        """How many notifications the kernel reported dropped since the stream opened."""

    def close(self) -> None: ...

    # Optional attribute `batch_seconds`: how long after a read's first items the runtime gathers more into one
    # batch; absent or None is the runtime's default (50 ms), 0 for a stream whose reads hand out batches already.


class StreamingDataset(Dataset, Protocol):
    """A dataset that also learns of changes between polls from the kernel. The poll remains the
    reconciliation pass (and the only source when the stream is unavailable)."""

    def open_stream(self) -> Stream | None:
        """Subscribe; None (with one logged warning saying why) when unavailable: not root, refused, ..."""

    def apply_stream(self, snapshot: Any, items: Sequence[Any]) -> tuple[Any, Sequence[Event]]:
        """Fold stream notifications into the committed snapshot; return the new snapshot and its events.

        Runs in the collector actor, serialised with observe/diff, so a change reported from the stream is not
        reported again by the next poll's diff."""


class LogDataset(Protocol):
    """A dataset that follows files records are appended to (wtmp, btmp). What is new depends on where the
    committed snapshot stopped reading, so observing and diffing are one step: `advance` replaces `observe` and
    `diff`. The runtime calls it every period, and at once when the dataset's stream (`open_stream`, optional)
    notifies a change; the snapshot it returns is committed after its events are spooled.
    """

    name: str

    def advance(self, previous: Any) -> tuple[Any, Sequence[Event]]:
        """Read on from the cursors of `previous` (None on a first run); return the new snapshot and the events
        of the records read. Return `previous` itself when nothing changed. A dataset that reads a bounded
        batch per call notifies its stream when more is waiting. It marks the events of what was there when
        it started (`system.audit.detected_at_startup`) itself: a backlog may take several calls."""

    def state_report(self, current: Any) -> Sequence[Event]:
        """Return the full state events for a snapshot (none for a log of events)."""


# The fields every event carries whatever its dataset (added by Event.to_document and the collector runtime):
# exact names, and prefixes of whole namespaces. A dataset module's FIELDS lists the others its events can set.
COMMON_FIELDS = frozenset({"@timestamp", "ecs.version", "service.type", "message"})
COMMON_FIELD_PREFIXES = ("event.", "agent.", "host.", "system.audit.")


# hostaudit's own fields every dataset's events may carry (system.audit.* is outside ECS, so each is declared
# with its Elasticsearch type): the changes of a change event (actors.event callers), the state-report id and
# the detected-at-startup mark (the collector runtime). A dataset module's AUDIT_FIELDS declares its own.
COMMON_AUDIT_FIELDS: Mapping[str, EcsField] = {
    "system.audit.changes.fields": EcsField("keyword", array=True),
    # The old values, nested under their own field names: any shape and type, so indexed as one flattened field.
    "system.audit.changes.previous": EcsField("flattened", array=False),
    "system.audit.detected_at_startup": EcsField("boolean", array=False),
    "system.audit.report.id": EcsField("keyword", array=False),
}


def is_common_field(name: str) -> bool:
    """True for a dotted field name every event has (or may have) whatever its dataset: event.*, host.* ..."""
    return name in COMMON_FIELDS or name.startswith(COMMON_FIELD_PREFIXES)


def dataset_fields(name: str) -> frozenset[str]:
    """The dotted ECS field names the events of dataset `name` can carry besides the common ones (its
    module's `FIELDS`). KeyError for a dataset that is not built."""
    module = importlib.import_module(BUILT_DATASETS[name])
    return frozenset(module.FIELDS)


def dataset_audit_fields(name: str) -> Mapping[str, EcsField]:
    """The `system.audit.<name>.*` fields dataset `name` declares (its module's `AUDIT_FIELDS`), with their types."""
    module = importlib.import_module(BUILT_DATASETS[name])
    return dict(module.AUDIT_FIELDS)


def audit_fields(datasets: Sequence[str] = tuple(BUILT_DATASETS)) -> dict[str, EcsField]:
    """Every declared `system.audit.*` field: the common ones and those of `datasets` (default: all built)."""
    fields = dict(COMMON_AUDIT_FIELDS)
    for name in datasets:
        fields.update(dataset_audit_fields(name))
    return fields


def event_field_table() -> FieldTable:
    """The ECS table plus every declared `system.audit.*` field: what hostaudit's events are checked against
    (`actors.ecs.validate_document(document, event_field_table())`) and what the index template maps."""
    return with_custom_fields(audit_fields())


def dataset_sets_field(name: str, field: str) -> bool:
    """True when some event of dataset `name` can have `field` (a common field, one of its FIELDS, or an
    object holding one of them, e.g. `process` or `user.group`)."""
    if is_common_field(field) or any(field + "." == prefix for prefix in COMMON_FIELD_PREFIXES):
        return True
    fields = dataset_fields(name)
    return field in fields or any(known.startswith(field + ".") for known in fields)


class Catalog:
    """The datasets as the configuration sees them: names, and each one's options schema (its options.py)."""

    built: tuple[str, ...] = tuple(BUILT_DATASETS)
    known: tuple[str, ...] = (*BUILT_DATASETS, *(name for name in PLANNED_DATASETS if name not in BUILT_DATASETS))

    def options_schema(self, name: str) -> Any:
        """The pydantic model of `<name>.*`, declared in `actors/datasets/<name>/options.py` as SCHEMA."""
        return importlib.import_module(f"actors.datasets.{name}.options").SCHEMA

    def sets_field(self, name: str, field: str) -> bool:
        return dataset_sets_field(name, field)


CATALOG = Catalog()


def load_dataset(name: str, context: DatasetContext) -> Dataset:
    """Import and construct the dataset called `name`."""
    module = importlib.import_module(BUILT_DATASETS[name])
    return module.create(context)
