"""The ECS field table (actors/ecs_fields.json), its generator, and the validator every test runs on events."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import ecs, event
from actors.ecs import KNOWN_TYPES, assert_ecs, field_table, validate_document

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE_PATH = REPO_ROOT / "actors" / "ecs_fields.json"
GENERATOR_PATH = REPO_ROOT / "ops" / "ecs" / "generate_fields.py"


def load_generator() -> ModuleType:
    """Import ops/ecs/generate_fields.py (a script, not a package module) without running main()."""
    spec = importlib.util.spec_from_file_location("generate_fields", GENERATOR_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_state_event() -> dict[str, Any]:
    """A host dataset state event shaped like Auditbeat 9.x's, with hostaudit's millisecond-UTC dates."""
    return {
        "@timestamp": "2026-11-26T00:45:25.192Z",
        "agent": {
            "type": "auditbeat",
            "name": "web-01",
            "version": "0.1.0",
            "id": "0f4bc2a1-6d1e-4c36-9c7f-2a4c1f0b3d55",
            "ephemeral_id": "6a1d8b52-2f7e-4b6c-8a57-0c1b7e3f9d21",
        },
        "ecs": {"version": "9.4.0"},
        "service": {"type": "system"},
        "event": {
            "kind": "state",
            "category": ["host"],
            "type": ["info"],
            "action": "host",
            "module": "system",
            "dataset": "host",
            "id": "019ac3f1-8a2b-7c4d-9e5f-1a2b3c4d5e6f",
            "sequence": 1,
        },
        "message": "Ubuntu host web-01 (IP: 10.0.2.15) is up for 0 days, 5 hours, 11 minutes",
        "host": {
            "name": "web-01",
            "hostname": "web-01",
            "id": "8f2c5d0e4b7a4c3e9d1f6a2b5c8e0d47",
            "architecture": "x86_64",
            "ip": ["10.0.2.15", "fe80::a00:27ff:fe4e:66a1"],
            "mac": ["08-00-27-4E-66-A1"],
            "os": {
                "type": "linux",
                "platform": "ubuntu",
                "name": "Ubuntu",
                "family": "debian",
                "version": "24.04.1 LTS (Noble Numbat)",
                "kernel": "6.8.0-49-generic",
            },
        },
        "system": {
            "audit": {
                "host": {
                    "uptime": 18_660_000_000_000,
                    "boottime": "2026-11-25T19:34:13.000Z",
                    "containerized": False,
                    "timezone.name": "UTC",
                    "timezone.offset.sec": 0,
                    "hostname": "web-01",
                    "id": "8f2c5d0e4b7a4c3e9d1f6a2b5c8e0d47",
                    "architecture": "x86_64",
                    "os": {
                        "platform": "ubuntu",
                        "name": "Ubuntu",
                        "family": "debian",
                        "version": "24.04.1 LTS (Noble Numbat)",
                        "kernel": "6.8.0-49-generic",
                        "codename": "noble",
                        "type": "linux",
                    },
                    "ip": ["10.0.2.15", "fe80::a00:27ff:fe4e:66a1"],
                    "mac": ["08-00-27-4E-66-A1"],
                }
            }
        },
    }


def process_state_event() -> dict[str, Any]:
    """A process dataset state event, exercising long, date, keyword-array and nested user/group fields."""
    return {
        "@timestamp": "2026-11-26T00:45:25.192Z",
        "ecs": {"version": "9.4.0"},
        "event": {
            "kind": "state",
            "category": ["process"],
            "type": ["info"],
            "action": "existing_process",
            "module": "system",
            "dataset": "process",
            "id": "019ac3f1-8a2b-7c4d-9e5f-1a2b3c4d5e70",
            "sequence": 42,
        },
        "message": "Process zsh (PID: 9086) by user elastic is RUNNING",
        "process": {
            "name": "zsh",
            "args": ["zsh", "-l"],
            "pid": 9086,
            "parent": {"pid": 9085},
            "working_directory": "/home/elastic",
            "executable": "/bin/zsh",
            "start": "2026-11-26T00:40:01.000Z",
            "entity_id": "+fYshazplsMYlr0y",
            "hash": {"sha1": "9f1e5c0c6b0d8b1d3b8a6e7c2f4a1b0c9d8e7f6a"},
            "thread": {"capabilities": {"effective": [], "permitted": []}},
        },
        "user": {
            "id": "1000",
            "name": "elastic",
            "group": {"id": "1000", "name": "elastic"},
            "effective": {"id": "1000", "group": {"id": "1000"}},
        },
        "related": {"user": ["elastic"]},
    }


def problems_naming(document: dict[str, Any], field: str) -> list[str]:
    """The validator's problems that name `field` (each problem starts with the field it is about)."""
    return [problem for problem in validate_document(document) if problem.startswith(field)]


# --- valid documents --------------------------------------------------------------------------------------------


def test_realistic_auditbeat_host_state_event_is_valid() -> None:
    assert validate_document(host_state_event()) == []


def test_realistic_process_state_event_is_valid() -> None:
    assert validate_document(process_state_event()) == []


def test_document_built_by_event_to_document_is_valid() -> None:
    host_fields = host_state_event()
    common = {key: host_fields[key] for key in ("agent", "ecs", "service", "host")}
    observed = event.Event(
        dataset="host",
        action="host",
        kind=event.STATE,
        category=("host",),
        type=("info",),
        message="Ubuntu host web-01 (IP: 10.0.2.15) is up for 0 days, 5 hours, 11 minutes",
        fields={"system": host_fields["system"]},
    ).stamped(sequence=1)
    assert_ecs(observed.to_document(common))


def test_literal_dotted_keys_count_the_same_as_nesting() -> None:
    document = {"@timestamp": "2026-11-26T00:45:25.192Z", "host.name": "web-01", "event": {"kind": "state"}}
    assert validate_document(document) == []


def test_custom_namespace_accepts_any_json_without_type_checks() -> None:
    document = {
        "system": {
            "audit": {
                "user": {
                    "uid": 1000,
                    "group": [{"name": "sudo", "gid": "27", "id": "27"}],
                    "password": {"type": "shadow_password", "last_changed": "2026-01-01"},
                }
            }
        }
    }
    assert validate_document(document) == []


def test_object_field_without_sub_fields_is_accepted_as_is() -> None:
    document = {"labels": {"env": "prod", "rack": "r12"}, "container": {"labels": {"app": "web"}}}
    assert validate_document(document) == []


def test_date_forms_hostaudit_and_elasticsearch_accept() -> None:
    for date in ("2026-11-26T00:45:25.192Z", "2026-11-26T00:45:25Z", "2026-11-26T00:45:25.123456789+01:00",
                 "2026-11-26"):
        assert validate_document({"event": {"created": date}}) == [], date


def test_float_field_accepts_integers_and_floats() -> None:
    assert validate_document({"host": {"cpu": {"usage": 0.25}}, "event": {"risk_score": 3}}) == []


# --- each kind of problem ---------------------------------------------------------------------------------------


def test_unknown_field_is_reported() -> None:
    document = host_state_event()
    document["host"]["favourite_colour"] = "blue"
    assert problems_naming(document, "host.favourite_colour") == [
        "host.favourite_colour: not an ECS 9.4.0 field (nor under system.audit.)"
    ]


def test_unknown_top_level_object_is_reported_per_leaf() -> None:
    problems = validate_document({"widget": {"size": 3, "colour": "red"}})
    assert [problem.split(":")[0] for problem in problems] == ["widget.size", "widget.colour"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("host.hostname", 5, "expected a string, got integer 5"),
        ("event.action", ["host"], "is not an array field"),
        ("event.sequence", "7", "expected an integer, got string '7'"),
        ("process.pid", True, "expected an integer, got boolean true"),
        ("process.pid", 12.0, "expected an integer, got number 12.0"),
        ("event.sequence", 2**63, "is outside"),
        ("event.created", "yesterday", "is not ISO-8601"),
        ("event.created", "2026-11-26T00:45:25.192", "is not ISO-8601 with a zone"),
        ("event.created", "2026-02-30T00:00:00Z", "is not ISO-8601"),
        ("event.created", "20261126T004525Z", "is not ISO-8601"),
        ("event.created", 1_764_118_000_000, "expected an ISO-8601 string"),
        ("source.ip", "999.1.1.1", "is not an IPv4 or IPv6 address"),
        ("source.ip", 167_772_687, "expected an IP address string"),
        ("source.ip", "fe80::1%eth0", "zone index"),
        ("process.interactive", "true", "expected true or false, got string 'true'"),
        ("process.interactive", 1, "expected true or false, got integer 1"),
        ("event.risk_score", math.nan, "not a finite number"),
        ("event.risk_score", False, "expected a number"),
        ("labels", "prod", "expected an object"),
        ("host.ip", {"v4": "10.0.2.15"}, "expected an IP address string, got object"),
    ],
)
def test_value_of_wrong_type_is_reported(field: str, value: Any, expected: str) -> None:
    problems = validate_document(nest({field: value}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and expected in problems[0], problems


def test_list_on_non_array_field_is_reported() -> None:
    document = host_state_event()
    document["host"]["hostname"] = ["web-01", "web-01.example"]
    assert problems_naming(document, "host.hostname") == [
        "host.hostname: a list, but ECS keyword field host.hostname is not an array field"
    ]


def test_each_element_of_an_array_field_is_type_checked() -> None:
    document = host_state_event()
    document["host"]["ip"] = ["10.0.2.15", "not-an-ip", 7]
    assert problems_naming(document, "host.ip") == [
        "host.ip[1]: ECS ip, 'not-an-ip' is not an IPv4 or IPv6 address",
        "host.ip[2]: ECS ip, expected an IP address string, got integer 7",
    ]


def test_null_is_reported_everywhere() -> None:
    document = host_state_event()
    document["host"]["os"]["version"] = None
    document["host"]["mac"] = [None]
    document["system"]["audit"]["host"]["containerized"] = None
    document["labels"] = {"env": None}
    assert validate_document(document) == [
        "host.mac[0]: null (omit the field instead)",
        "host.os.version: null (omit the field instead)",
        "system.audit.host.containerized: null (omit the field instead)",
        "labels.env: null (omit the field instead)",
    ]


def test_non_json_python_values_are_reported_even_in_custom_namespace() -> None:
    document = {"system": {"audit": {"host": {"ip": ("10.0.2.15",), "raw": b"\x00", "load": math.inf}}}}
    assert validate_document(document) == [
        "system.audit.host.ip: Python tuple is not a JSON value",
        "system.audit.host.raw: Python bytes is not a JSON value",
        "system.audit.host.load: inf is not a finite number (invalid JSON)",
    ]


def test_tuple_on_an_array_field_is_reported() -> None:
    problems = validate_document({"event": {"category": ("host",)}})
    assert problems == ["event.category: ECS keyword, expected a string, got Python tuple"]


def test_scalar_where_ecs_expects_an_object_is_reported() -> None:
    assert validate_document({"host": "web-01"}) == [
        "host: ECS has fields under host.*, so expected an object, got string 'web-01'"
    ]


def test_same_field_given_twice_is_reported() -> None:
    document = {"host.name": "web-01", "host": {"name": "web-02"}}
    assert validate_document(document) == ["host.name: given twice (as a dotted key and as nested objects)"]


def test_sub_fields_of_an_object_field_are_type_checked() -> None:
    document = {
        "process": {"tty": {"char_device": {"major": "4", "minor": 1}}},
        "file": {"elf": {"sections": [{"name": ".text", "virtual_size": 10}, {"name": 5}]}},
    }
    assert validate_document(document) == [
        "process.tty.char_device.major: ECS long, expected an integer, got string '4'",
        "file.elf.sections.name: ECS keyword, expected a string, got integer 5",
    ]


def test_auditbeat_root_fields_missing_from_ecs_are_reported() -> None:
    """Auditbeat puts these at the root, but ECS 9.4 has no such fields: hostaudit must not emit them there."""
    outside_ecs = [
        "host.containerized",
        "host.os.codename",
        "process.ppid",
        "process.created",
        "user.entity_id",
        "user.saved.id",
        "user.saved.group.id",
        "user.terminal",
        "event.origin",
        "socket.entity_id",
        "flow.final",
        "flow.complete",
    ]
    problems = validate_document(nest({name: "x" for name in outside_ecs}))
    assert [problem.split(":")[0] for problem in problems] == outside_ecs


def test_non_mapping_document_is_reported() -> None:
    assert validate_document(["not", "a", "document"]) == ["document: expected an object, got array"]  # type: ignore[arg-type]


def test_assert_ecs_lists_every_problem_and_shows_the_document() -> None:
    document = host_state_event()
    document["event"]["sequence"] = "1"
    document["host"]["shoe_size"] = 44
    with pytest.raises(AssertionError) as raised:
        assert_ecs(document)
    text = str(raised.value)
    assert "2 problem(s)" in text
    assert "event.sequence: ECS long, expected an integer" in text
    assert "host.shoe_size: not an ECS 9.4.0 field" in text
    assert '"shoe_size": 44' in text


def test_validation_does_not_change_the_document() -> None:
    document = host_state_event()
    before = copy.deepcopy(document)
    validate_document(document)
    assert document == before


# --- the table ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field_type", "array"),
    [
        ("@timestamp", "date", False),
        ("message", "match_only_text", False),
        ("tags", "keyword", True),
        ("labels", "object", False),
        ("ecs.version", "keyword", False),
        ("event.id", "keyword", False),
        ("event.sequence", "long", False),
        ("event.category", "keyword", True),
        ("event.type", "keyword", True),
        ("event.duration", "long", False),
        ("host.ip", "ip", True),
        ("host.mac", "keyword", True),
        ("process.args", "keyword", True),
        ("process.parent.pid", "long", False),
        ("process.exit_code", "long", False),
        ("process.hash.sha1", "keyword", False),
        ("process.thread.capabilities.effective", "keyword", True),
        ("user.effective.id", "keyword", False),
        ("related.user", "keyword", True),
        ("related.ip", "ip", True),
        ("source.bytes", "long", False),
        ("client.ip", "ip", False),
        ("server.port", "long", False),
        ("group.id", "keyword", False),
        ("process.saved_user.id", "keyword", False),
        ("event.end", "date", False),
        ("network.community_id", "keyword", False),
        ("service.type", "keyword", False),
    ],
)
def test_table_holds_the_fields_hostaudit_relies_on(name: str, field_type: str, array: bool) -> None:
    assert field_table().fields[name] == ecs.EcsField(type=field_type, array=array)


def test_table_records_the_ecs_version_hostaudit_emits() -> None:
    assert field_table().ecs_version == event.ECS_VERSION == "9.4.0"
    assert "9.5.0-dev" in field_table().source and "sha256" in field_table().source


def test_every_table_entry_has_a_type_the_validator_knows() -> None:
    raw = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    assert set(raw) == {"ecs_version", "fields", "source"}
    for name, entry in raw["fields"].items():
        assert set(entry) == {"array", "type"}, name
        assert entry["type"] in KNOWN_TYPES, name
        assert isinstance(entry["array"], bool), name


def test_table_holds_only_the_field_sets_the_generator_selects() -> None:
    generator = load_generator()
    names = field_table().fields.keys()
    assert all(generator.selected(name) for name in names)
    for prefix in generator.FIELD_SET_PREFIXES:
        assert any(name.startswith(prefix) for name in names), f"no ECS field starts with {prefix}"
    assert set(generator.ROOT_FIELDS) <= names


def test_committed_table_is_byte_identical_to_what_the_generator_writes() -> None:
    """Hand edits would break this: the file must be exactly render() of its own content."""
    generator = load_generator()
    text = TABLE_PATH.read_text(encoding="utf-8")
    assert generator.render(json.loads(text)) == text


# --- the generator (on a synthetic ecs_flat.yml; tests never read the ECS source file) -------------------------------------

SYNTHETIC_FLAT = """\
'@timestamp': {flat_name: '@timestamp', type: date, normalize: []}
tags: {flat_name: tags, type: keyword, normalize: [array]}
host.ip: {flat_name: host.ip, type: ip, normalize: [array]}
event.sequence: {flat_name: event.sequence, type: long, normalize: []}
cloud.region: {flat_name: cloud.region, type: keyword, normalize: []}
hostname_like: {flat_name: hostname_like, type: keyword, normalize: []}
agent.id: {flat_name: agent.id, type: keyword}
"""


def test_generator_selects_prefixed_fields_and_marks_arrays(tmp_path: Path) -> None:
    generator = load_generator()
    source = tmp_path / "ecs_flat.yml"
    source.write_text(SYNTHETIC_FLAT, encoding="utf-8")
    table = generator.build_table(generator.load_flat(source), "1.2.3", "synthetic")
    assert table == {
        "ecs_version": "1.2.3",
        "source": "synthetic",
        "fields": {
            "@timestamp": {"array": False, "type": "date"},
            "agent.id": {"array": False, "type": "keyword"},
            "event.sequence": {"array": False, "type": "long"},
            "host.ip": {"array": True, "type": "ip"},
            "tags": {"array": True, "type": "keyword"},
        },
    }


def test_generator_output_is_deterministic(tmp_path: Path) -> None:
    generator = load_generator()
    source = tmp_path / "ecs_flat.yml"
    source.write_text(SYNTHETIC_FLAT, encoding="utf-8")
    reordered = tmp_path / "reordered.yml"
    reordered.write_text("".join(reversed(SYNTHETIC_FLAT.splitlines(keepends=True))), encoding="utf-8")
    outputs = []
    for run, flat in enumerate((source, source, reordered)):
        output = tmp_path / f"out{run}.json"
        argv = ["--source", str(flat), "--output", str(output), "--ecs-version", "1.2.3", "--note", "synthetic"]
        assert generator.main(argv) == 0
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]
    # The source's sha256 goes into "source", so only the fields can be compared for a reordered source.
    first, last = json.loads(outputs[0]), json.loads(outputs[2])
    assert list(first["fields"]) == list(last["fields"]) and first["fields"] == last["fields"]
    assert generator.main(["--source", str(source), "--output", str(tmp_path / "out0.json"), "--ecs-version",
                           "1.2.3", "--note", "synthetic", "--check"]) == 0


def test_generator_refuses_an_unknown_source_without_an_explicit_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = load_generator()
    source = tmp_path / "ecs_flat.yml"
    source.write_text(SYNTHETIC_FLAT, encoding="utf-8")
    output = tmp_path / "out.json"
    assert generator.main(["--source", str(source), "--output", str(output)]) == 2
    assert "pass both --ecs-version and --note" in capsys.readouterr().err
    assert not output.exists()


# --- property: any document built from table fields with fitting values is valid -----------------------------------

_SCALAR_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "keyword": st.text(max_size=20),
    "constant_keyword": st.text(max_size=20),
    "wildcard": st.text(max_size=20),
    "match_only_text": st.text(max_size=20),
    "long": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "scaled_float": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**31), 2**31),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "date": st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(timezone.utc)).map(
        lambda moment: event.iso_millis(moment.timestamp())
    ),
    "ip": st.ip_addresses().map(str),
}

_LEAF_FIELDS = sorted(
    name
    for name, spec in field_table().fields.items()
    if spec.type in _SCALAR_VALUES and name not in field_table().parents
)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(_LEAF_FIELDS), min_size=1, max_size=25, unique=True))
    flat: dict[str, Any] = {}
    for name in names:
        spec = field_table().fields[name]
        value = _SCALAR_VALUES[spec.type]
        flat[name] = draw(st.lists(value, max_size=3) if spec.array else value)
    return nest(flat)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_documents())
def test_any_document_of_fitting_values_is_valid(document: dict[str, Any]) -> None:
    assert validate_document(document) == []


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Turn {"a.b": 1} into {"a": {"b": 1}}."""
    document: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return document
