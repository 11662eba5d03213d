"""Each dataset module declares FIELDS, the ECS fields its events can carry besides the common ones."""

from __future__ import annotations

import json

import pytest

from actors.datasets import BUILT_DATASETS, dataset_fields, dataset_sets_field, is_common_field
from tests.sample_support import flat_field_names, sample_path



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
    assert not dataset_sets_field("user", "user.na") and not dataset_sets_field("socket", "process.exit_code")
    with pytest.raises(KeyError):
        dataset_fields("tcp")
