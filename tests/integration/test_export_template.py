"""`hostaudit export template` against the real search engine: the template loads, and every field of every sample
document is mapped with its declared type once the samples are indexed into data streams."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.datasets import BUILT_DATASETS
from actors.datasets.user.dataset import describe_changes
from tests.agent_harness import REPO
from tests.sample_support import EVENT_FIELDS, sample_path
from tests.search_support import bulk_create, http_json

# What the opensearch flavor maps instead of these ECS types (README "Into Elasticsearch"), written out here
# rather than taken from actors/template.py, so that a change there has to be made on purpose in both places.
OPENSEARCH_TYPE_OF = {"flattened": "flat_object", "constant_keyword": "keyword", "match_only_text": "text",
                      "wildcard": "keyword"}


def export_template(tmp_path: Path, *args: str) -> bytes:
    """The stdout of `hostaudit export template ARGS` (the real command, in a subprocess)."""
    result = subprocess.run([sys.executable, "-m", "actors.cli", "export", "template", "-E", f"path.data={tmp_path}",
                             *args], cwd=REPO, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def put_template(url: str, name: str, body: bytes) -> tuple[int, Any]:
    """PUT the bytes as they came out of the command, as `| curl -XPUT .../_index_template/NAME -d @-` would."""
    return http_json(f"{url}/_index_template/{name}", "PUT", body)


def mapping_types(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{dotted name: type} of a mapping's properties; an object without a type of its own is "object"."""
    types: dict[str, str] = {}
    for key, field in mapping.get("properties", {}).items():
        name = f"{prefix}.{key}" if prefix else key
        types[name] = field.get("type", "object")
        types.update(mapping_types(field, name))
    return types


def document_fields(value: Any, prefix: str = "") -> set[str]:
    """The dotted names a document sets, through objects and lists of objects, stopping at flattened fields."""
    spec = EVENT_FIELDS.fields.get(prefix)
    if spec is not None and spec.type == "flattened":
        return {prefix}
    if isinstance(value, list):
        return set().union(*(document_fields(item, prefix) for item in value)) if value else {prefix}
    if not isinstance(value, dict):
        return {prefix}
    names = {prefix} if prefix else set()
    for key, item in value.items():
        names |= document_fields(item, f"{prefix}.{key}" if prefix else key)
    return names


def expected_type(name: str) -> str:
    """The type the engine should report for a document field: the table's, through the documented fallbacks."""
    spec = EVENT_FIELDS.fields.get(name)
    if spec is None:
        assert name in EVENT_FIELDS.parents, f"{name} is neither a field nor a group of fields"
        return "object"
    return OPENSEARCH_TYPE_OF.get(spec.type, spec.type)


def samples_with_a_change_event() -> dict[str, dict[str, Any]]:
    """The sample document of every built dataset, plus a user change event whose old values (a list of group
    objects, a string) go into system.audit.changes.previous by the user dataset's own describe_changes."""
    samples = {name: json.loads(sample_path(name).read_text()) for name in BUILT_DATASETS}
    changed = json.loads(json.dumps(samples["user"]))
    changed["event"].update(id=str(uuid.uuid4()), action="user_changed", type=["change"])
    audit_user = changed["system"]["audit"]["user"]
    old = {"system.audit.user.group": audit_user["group"][:1], "system.audit.user.shell": "/bin/sh"}
    changed["system"]["audit"]["changes"] = describe_changes(old, list(old))
    samples["user-changed"] = changed
    return samples


@pytest.fixture
def prefix(search_url: str) -> Iterator[str]:
    """A name prefix of the test's own (templates and data streams on the shared node), removed afterwards.
    It does not start with "hostaudit-": a template for hostaudit-* at the same priority would refuse it."""
    name = f"ha-template-{uuid.uuid4().hex[:10]}"
    yield name
    http_json(f"{search_url}/_data_stream/{name}-*", "DELETE")
    http_json(f"{search_url}/_index_template/{name}*", "DELETE")


def test_the_opensearch_template_loads_and_maps_every_sample_field_as_declared(search_url: str, prefix: str,
                                                                               tmp_path: Path) -> None:
    body = export_template(tmp_path, "--flavor", "opensearch", "--replicas", "0",
                           "-E", f"setup.template.pattern={prefix}-*")
    status, answer = put_template(search_url, prefix, body)
    assert (status, answer) == (200, {"acknowledged": True})
    template_types = mapping_types(json.loads(body)["template"]["mappings"])

    samples = samples_with_a_change_event()
    for name, document in samples.items():
        stream = f"{prefix}-{name}-default"
        response = bulk_create(search_url, stream, [(document["event"]["id"], document)])
        assert response["items"][0]["create"]["status"] == 201, response

        status, mappings = http_json(f"{search_url}/{stream}/_mapping")
        assert status == 200 and len(mappings) == 1, mappings
        [(backing_index, mapping)] = mappings.items()
        assert backing_index.startswith(f".ds-{stream}-")  # a data stream, not an index of that name
        types = mapping_types(mapping["mappings"])
        wrong = {field: (types.get(field), expected_type(field)) for field in document_fields(document)
                 if types.get(field) != expected_type(field)}
        assert wrong == {}, f"{name}: field: (mapped, expected): {wrong}"
        assert types == template_types, f"{name}: fields mapped beyond the template: {set(types) - set(template_types)}"

    def hits(query: dict[str, Any]) -> list[str]:
        status, found = http_json(f"{search_url}/{prefix}-*/_search", "POST", {"query": query})
        assert status == 200, found
        return sorted(hit["_source"]["event"]["action"] for hit in found["hits"]["hits"])

    # Searchable as their types: a long, a CIDR on an ip, a date range, a term inside the flat_object.
    assert hits({"term": {"process.pid": samples["process"]["process"]["pid"]}}) == ["process_started"]
    assert hits({"term": {"source.ip": "10.0.0.0/8"}}) == ["socket_opened"]
    assert hits({"range": {"process.start": {"lt": "2023-11-15T00:00:00Z"}}}) == ["process_started"]
    assert hits({"term": {"system.audit.changes.previous.system.audit.user.group.name": "elastic"}}) == [
        "user_changed"]


def test_every_ecs_field_loads_on_opensearch_with_the_fallbacks(search_url: str, prefix: str,
                                                                tmp_path: Path) -> None:
    body = export_template(tmp_path, "--flavor", "opensearch", "--fields", "ecs", "--replicas", "0",
                           "-E", f"setup.template.pattern={prefix}-*")
    assert put_template(search_url, prefix, body) == (200, {"acknowledged": True})
    stream = f"{prefix}-host-default"
    sample = json.loads(sample_path("host").read_text())
    assert bulk_create(search_url, stream, [("h1", sample)])["items"][0]["create"]["status"] == 201
    status, mappings = http_json(f"{search_url}/{stream}/_mapping")
    types = mapping_types(next(iter(mappings.values()))["mappings"])
    for name, spec in EVENT_FIELDS.fields.items():
        assert types[name] == OPENSEARCH_TYPE_OF.get(spec.type, spec.type), name


def test_the_elasticsearch_flavor_is_refused_by_opensearch_for_flattened(search_url: str, prefix: str,
                                                                         tmp_path: Path) -> None:
    body = export_template(tmp_path, "-E", f"setup.template.pattern={prefix}-*")
    status, answer = put_template(search_url, prefix, body)
    assert status == 400 and "No handler for type [flattened]" in json.dumps(answer)
