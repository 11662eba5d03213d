"""The index template generator (actors/template.py) and `hostaudit export template`: fields, types, flavors, setup.*."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors import cli
from actors.datasets import BUILT_DATASETS, dataset_fields
from actors.datasets.process import dataset as process_dataset
from actors.ecs import EcsField, field_table
from actors.template import KEYWORD_IGNORE_ABOVE, TemplateOptions, field_mapping, index_template, properties
from tests.sample_support import EVENT_FIELDS, sample_path


def leaves(props: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """The mapping of every field of `properties`, by dotted name (objects with members included)."""
    found: dict[str, dict[str, Any]] = {}
    for key, mapping in props.items():
        name = f"{prefix}.{key}" if prefix else key
        found[name] = {k: v for k, v in mapping.items() if k != "properties"}
        found.update(leaves(mapping.get("properties", {}), name))
    return found


def sample_leaves(value: Any, prefix: str = "") -> set[str]:
    """The dotted names of a document's values, through lists of objects (user.group: [{name, gid, id}])."""
    if isinstance(value, list):
        return set().union(*(sample_leaves(item, prefix) for item in value)) if value else {prefix}
    if not isinstance(value, dict):
        return {prefix}
    names = {prefix} if prefix else set()
    for key, item in value.items():
        names |= sample_leaves(item, f"{prefix}.{key}" if prefix else key)
    return names


def mapped(flavor: str = "elasticsearch", scope: str = "hostaudit", **kwargs: Any) -> dict[str, dict[str, Any]]:
    template, _ = index_template(flavor, scope, **kwargs)
    return leaves(template["template"]["mappings"]["properties"])


def export(*args: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, dict[str, Any] | None, str]:
    code = cli.main(["export", "template", "-E", f"path.data={tmp_path}", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


# --- fields and types ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", list(BUILT_DATASETS))
def test_every_field_of_every_sample_is_mapped_with_its_declared_type(dataset: str) -> None:
    fields = mapped()
    sample = json.loads(sample_path(dataset).read_text())
    for name in sample_leaves(sample):
        if name in EVENT_FIELDS.fields:
            assert fields[name]["type"] == EVENT_FIELDS.fields[name].type, name
        else:  # an object that only groups fields: mapped as one, without a type of its own
            assert name in EVENT_FIELDS.parents and "type" not in fields[name], name


def test_the_types_the_issue_names() -> None:
    fields = mapped()
    assert fields["@timestamp"] == {"type": "date"} and fields["process.start"] == {"type": "date"}
    assert fields["message"] == {"type": "match_only_text"}
    assert fields["host.ip"] == fields["source.ip"] == fields["system.audit.host.ip"] == {"type": "ip"}
    for name in ("process.pid", "source.port", "destination.bytes", "event.sequence", "system.audit.host.uptime"):
        assert fields[name] == {"type": "long"}, name
    assert fields["event.dataset"] == {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}
    assert fields["system.audit.changes.previous"] == {"type": "flattened"}
    assert fields["system.audit.user.group"] == {"type": "object"}  # a list of {name, gid, id}
    assert fields["system.audit.user.group.gid"]["type"] == "keyword"


def test_only_fields_hostaudit_emits_by_default_every_ecs_field_on_request() -> None:
    restricted, everything = mapped(), mapped(scope="ecs")
    assert "process.pid" in restricted and "host.os.kernel" in restricted and "agent.id" in restricted
    assert "process.command_line" not in restricted and "file.path" not in restricted  # no dataset sets them
    assert "process.command_line" in everything and "file.elf.sections" in everything
    assert set(field_table().fields) | set(EVENT_FIELDS.fields) <= set(everything)


def test_a_field_added_to_a_datasets_fields_shows_up_in_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "process.title" not in mapped()
    monkeypatch.setattr(process_dataset, "FIELDS", process_dataset.FIELDS | {"process.title", "process.io.text"})
    assert dataset_fields("process") >= {"process.title"}
    fields = mapped()
    assert fields["process.title"] == {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}
    assert fields["process.io.text"] == {"type": "wildcard"}
    assert fields["process.io"] == {"type": "object"}  # an ancestor that is an ECS object field keeps its type


def test_a_system_audit_field_added_to_a_dataset_shows_up_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_dataset, "AUDIT_FIELDS",
                        {**process_dataset.AUDIT_FIELDS, "system.audit.process.io_wait": EcsField("long", False)})
    assert mapped()["system.audit.process.io_wait"] == {"type": "long"}


def test_a_fields_entry_outside_the_ecs_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_dataset, "FIELDS", process_dataset.FIELDS | {"process.colour"})
    with pytest.raises(ValueError, match=r"dataset process: FIELDS names \['process.colour'\]"):
        mapped()


def test_a_field_cannot_be_both_a_value_and_an_object() -> None:
    with pytest.raises(ValueError, match="event.id is a keyword field, so event.id.part cannot be"):
        properties({"event.id": EcsField("keyword", False), "event.id.part": EcsField("long", False)},
                   "elasticsearch")


# --- flavors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ecs_type, elasticsearch, opensearch", [
    ("flattened", {"type": "flattened"}, {"type": "flat_object"}),
    ("constant_keyword", {"type": "constant_keyword"}, {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}),
    ("match_only_text", {"type": "match_only_text"}, {"type": "text"}),
    ("wildcard", {"type": "wildcard"}, {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}),
    ("scaled_float", {"type": "scaled_float", "scaling_factor": 1000}, {"type": "scaled_float", "scaling_factor": 1000}),
    ("ip", {"type": "ip"}, {"type": "ip"}),
    ("nested", {"type": "nested"}, {"type": "nested"}),
])
def test_flavor_fallbacks(ecs_type: str, elasticsearch: dict[str, Any], opensearch: dict[str, Any]) -> None:
    assert field_mapping(ecs_type, "elasticsearch") == elasticsearch
    assert field_mapping(ecs_type, "opensearch") == opensearch


def test_the_opensearch_flavor_has_no_type_opensearch_lacks() -> None:
    types = {mapping.get("type") for mapping in mapped("opensearch", "ecs").values()}
    assert not types & {"flattened", "constant_keyword", "match_only_text", "wildcard"}
    assert {"flat_object", "text", "nested", "geo_point", "scaled_float"} <= types


def test_ilm_only_for_elasticsearch() -> None:
    options = TemplateOptions({"ilm": {"enabled": True, "policy_name": "audit-90d"}})
    template, warnings = index_template("elasticsearch", options=options)
    assert template["template"]["settings"]["index"]["lifecycle"] == {"name": "audit-90d"} and warnings == []
    template, warnings = index_template("opensearch", options=options)
    assert "lifecycle" not in template["template"]["settings"]["index"]
    assert len(warnings) == 1 and warnings[0].startswith("setup.ilm: OpenSearch has no ILM")
    given = TemplateOptions({"template": {"settings": {"index": {"lifecycle": {"name": "x"}, "codec": "best_compression"}}}})
    template, warnings = index_template("opensearch", options=given)
    assert template["template"]["settings"]["index"]["codec"] == "best_compression"
    assert "lifecycle" not in template["template"]["settings"]["index"] and "ILM settings" in warnings[0]


# --- the command and setup.* ----------------------------------------------------------------------------------------


def test_defaults_a_data_stream_template_for_hostaudit_star(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    code, template, err = export(capsys=capsys, tmp_path=tmp_path)
    assert code == 0 and err == ""
    assert template is not None
    assert template["index_patterns"] == ["hostaudit-*"] and template["data_stream"] == {}
    assert template["priority"] == 150 and "number_of_replicas" not in template["template"]["settings"]["index"]
    assert template["template"]["mappings"]["properties"]["system"]["properties"]["audit"]["properties"]["changes"][
        "properties"]["previous"] == {"type": "flattened"}


def test_pattern_settings_and_replicas_from_the_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "hostaudit.yml"
    config.write_text("setup.template:\n  name: audit\n  pattern: 'audit-*'\n  settings:\n"
                      "    index.number_of_shards: 2\n    index.number_of_replicas: 2\n"
                      "setup.kibana.host: 'localhost:5601'\n")
    code, template, _ = export("-c", str(config), "-E", "setup.template.priority=300", "--flavor", "opensearch",
                               capsys=capsys, tmp_path=tmp_path)
    assert code == 0 and template is not None
    assert template["index_patterns"] == ["audit-*"] and template["priority"] == 300
    index = template["template"]["settings"]["index"]
    assert (index["number_of_shards"], index["number_of_replicas"]) == (2, 2)
    assert index["mapping"]["total_fields"]["limit"] == 10000
    code, template, _ = export("-c", str(config), "--replicas", "0", "-E", "setup.template.data_stream=false",
                               capsys=capsys, tmp_path=tmp_path)
    assert template is not None and template["template"]["settings"]["index"]["number_of_replicas"] == 0
    assert "data_stream" not in template


@pytest.mark.parametrize("override, message", [
    ("setup.template.patern=x-*", "setup.template.patern: unknown setting (known: "),
    ("setup.template.priority=-1", "setup.template.priority"),
    ("setup.template.pattern=", "setup.template.pattern"),
    ("setup.ilm.enabled=maybe", "setup.ilm.enabled"),
    ("setup.template.settings.colour=blue", "setup.template.settings.colour"),
])
def test_a_wrong_setup_key_is_one_line_naming_it(override: str, message: str, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    code, _, err = export("-E", override, capsys=capsys, tmp_path=tmp_path)
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_opensearch_warns_of_ilm_on_stderr_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, template, err = export("--flavor", "opensearch", "-E", "setup.ilm.enabled=true",
                                 capsys=capsys, tmp_path=tmp_path)
    assert code == 0 and template is not None
    assert err.startswith("hostaudit: warning: setup.ilm: OpenSearch has no ILM")
    assert "lifecycle" not in template["template"]["settings"]["index"]


def test_a_negative_replica_count_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = export("--replicas", "-1", capsys=capsys, tmp_path=tmp_path)
    assert code == 1 and "--replicas: must be 0 or more" in err
