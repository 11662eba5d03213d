"""Each dataset module declares FIELDS, the ECS fields its events can carry besides the common ones, and
AUDIT_FIELDS, its own system.audit.<dataset>.* fields with their types."""

from __future__ import annotations

import json

import pytest

from actors.datasets import (BUILT_DATASETS, COMMON_AUDIT_FIELDS, dataset_audit_fields, dataset_fields,
                             dataset_sets_field, is_common_field)
from actors.ecs import KNOWN_TYPES, EcsField, validate_document, with_custom_fields
from tests.sample_support import EVENT_FIELDS, flat_field_names, sample_path


@pytest.mark.parametrize("name", list(BUILT_DATASETS))
def test_every_field_of_the_sample_document_is_common_or_in_fields(name: str) -> None:
    document = json.loads(sample_path(name).read_text())
    undeclared = sorted(field for field in flat_field_names(document)
                        if not is_common_field(field) and field not in dataset_fields(name))
    assert undeclared == [], f"actors/datasets/{name}.py FIELDS lacks {undeclared}"


@pytest.mark.parametrize("name", list(BUILT_DATASETS))
def test_fields_are_dotted_names_outside_the_common_ones(name: str) -> None:
    fields = dataset_fields(name)
    assert isinstance(fields, frozenset)
    assert all(isinstance(field, str) and field and not is_common_field(field) for field in fields)


def test_the_common_fields() -> None:
    for field in ("@timestamp", "event.id", "agent.id", "host.id", "ecs.version", "service.type", "message",
                  "system.audit.changes.fields"):
        assert is_common_field(field)
    for field in ("process.name", "user.name", "eventual", "hostname", "system.other"):
        assert not is_common_field(field)


def test_dataset_sets_field_knows_objects_and_leaves() -> None:
    assert dataset_sets_field("process", "process.name") and dataset_sets_field("process", "process")
    assert dataset_sets_field("process", "user.group") and dataset_sets_field("host", "host.os.kernel")
    assert dataset_sets_field("host", "event") and not dataset_sets_field("host", "process.name")
    assert not dataset_sets_field("user", "user.na") and not dataset_sets_field("socket", "process.args")
    with pytest.raises(KeyError):
        dataset_fields("login")


@pytest.mark.parametrize("name", list(BUILT_DATASETS))
def test_audit_fields_are_the_datasets_own_with_known_types(name: str) -> None:
    declared = dataset_audit_fields(name)
    assert declared, f"actors/datasets/{name}/dataset.py declares no AUDIT_FIELDS"
    for field, spec in declared.items():
        assert field.startswith(f"system.audit.{name}.") and isinstance(spec, EcsField), field
        assert spec.type in KNOWN_TYPES, field
    assert all(field.startswith("system.audit.") for field in COMMON_AUDIT_FIELDS)


@pytest.mark.parametrize("name", list(BUILT_DATASETS))
def test_every_system_audit_field_of_the_sample_is_declared_with_a_fitting_type(name: str) -> None:
    document = json.loads(sample_path(name).read_text())
    assert any(field.startswith(f"system.audit.{name}.") for field in flat_field_names(document))
    assert validate_document(document, EVENT_FIELDS) == []


def test_undeclared_or_mistyped_system_audit_fields_are_problems() -> None:
    document = json.loads(sample_path("host").read_text())
    document["system"]["audit"]["host"]["containerized"] = "no"
    document["system"]["audit"]["host"]["colour"] = "blue"
    document["system"]["audit"]["changes"] = {"fields": ["host.ip"], "previous": {"host": {"ip": ["10.0.0.1"]}}}
    assert sorted(validate_document(document, EVENT_FIELDS)) == [
        "system.audit.host.colour: not a declared field (hostaudit's own fields are declared with their types)",
        "system.audit.host.containerized: ECS boolean, expected true or false, got string 'no'",
    ]
    assert validate_document(document) == []  # without the declarations, system.audit.* is not checked


def test_custom_fields_must_lie_under_system_audit() -> None:
    with pytest.raises(ValueError, match="must lie under system.audit."):
        with_custom_fields({"hostaudit.colour": EcsField("keyword", False)})
    with pytest.raises(ValueError, match="unknown types"):
        with_custom_fields({"system.audit.colour": EcsField("colour", False)})
