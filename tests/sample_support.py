"""The fields every dataset's sample document (actors/datasets/<name>/sample.json) shares, where it lives, and
the field table every test checks hostaudit's documents against."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from actors.datasets import event_field_table
from actors.event import ECS_VERSION

DATASETS_DIR = Path(__file__).resolve().parent.parent / "actors" / "datasets"


# The ECS table plus the declared system.audit.* fields (the datasets' AUDIT_FIELDS and COMMON_AUDIT_FIELDS):
# `assert_ecs(document, EVENT_FIELDS)` also type-checks hostaudit's own fields, as the index template maps them.
EVENT_FIELDS = event_field_table()


def sample_path(dataset: str) -> Path:
    """The sample document of `dataset`, kept beside its code."""
    return DATASETS_DIR / dataset / "sample.json"


SAMPLE_AGENT = {"type": "hostaudit", "name": "ubuntu-jammy", "version": "0.1.0",
                "id": "0b0d5b5e-7a1c-4f6e-9d8a-3f2e1c0b9a87", "ephemeral_id": "5f3c2a1b-8d7e-4c6b-a9f0-1e2d3c4b5a69"}


def sample_common(host: Mapping[str, Any]) -> dict[str, Any]:
    """The common fields of a sample event: a fixed agent, this ECS version, and `host`."""
    return {"agent": dict(SAMPLE_AGENT), "ecs": {"version": ECS_VERSION}, "service": {"type": "system"},
            "host": dict(host)}


def flat_field_names(document: Any, prefix: str = "") -> set[str]:
    """The dotted names of the leaves of a nested document (a list counts as one leaf)."""
    if not isinstance(document, dict):
        return {prefix}
    names: set[str] = set()
    for key, value in document.items():
        names |= flat_field_names(value, f"{prefix}.{key}" if prefix else key)
    return names
