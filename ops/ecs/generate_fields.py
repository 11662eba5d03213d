"""Generate actors/ecs_fields.json, hostaudit's table of the ECS fields it may emit, from ECS's ecs_flat.yml.

Usage (from anywhere):

    .venv/bin/python ops/ecs/generate_fields.py            # write actors/ecs_fields.json
    .venv/bin/python ops/ecs/generate_fields.py --check    # exit 1 if the committed table is stale

The output is deterministic (sorted keys, one field per line, fixed formatting), so re-running on the same
source gives a byte-identical file. The JSON is committed; hostaudit never reads the ECS source at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT / ".." / "shared" / "ecs" / "ecs_flat.yml"
DEFAULT_OUTPUT = REPO_ROOT / "actors" / "ecs_fields.json"

# Field sets hostaudit emits (or may emit), as flat-name prefixes. Every ECS field whose flat name starts with
# one of these goes into the table. Add a prefix here when a dataset starts using a new field set, then re-run.
FIELD_SET_PREFIXES: tuple[str, ...] = (
    "agent.",  # agent.type/version/id/ephemeral_id/name (libbeat's agent fields)
    "ecs.",  # ecs.version, on every event
    "event.",  # event.kind/category/type/action/module/dataset/id/sequence/...
    "host.",  # host dataset and the host metadata on every event
    "service.",  # service.type: "system"
    "process.",  # process dataset, and the process behind a socket
    "user.",  # user, process, socket and login datasets
    "group.",  # socket flows' group.id/group.name
    "source.",  # socket and login datasets
    "destination.",  # socket dataset
    "client.",  # socket dataset: the end that initiated the connection (as Auditbeat's socket flows)
    "server.",  # socket dataset: the end that accepted it
    "network.",  # socket dataset
    "related.",  # related.user / related.ip
    "container.",  # add_docker_metadata-style enrichment
    "error.",  # error.message when a collection fails
    "file.",  # file metadata (paths, hashes, owners) when a dataset reports on a file
    "package.",  # package dataset: package.name/version/architecture/installed/size/...
)

# Top-level ECS fields without a field-set prefix that hostaudit uses.
ROOT_FIELDS: tuple[str, ...] = ("@timestamp", "message", "tags", "labels")

# The ECS release the table is recorded as, and a note on where it came from. They hold for the source file
# whose sha256 is KNOWN_SOURCE_SHA256; a different source needs --ecs-version and --note (see main()).
KNOWN_SOURCE_SHA256 = "5bfbeed44013785679751295a45f7a9c751e6aca5366f6118f2508884bd0fac8"
KNOWN_ECS_VERSION = "9.4.0"
KNOWN_SOURCE_NOTE = (
    "elastic/ecs generated/ecs/ecs_flat.yml at commit b85f7573f0b48c03fddf90dad06fc743876f1b33 "
    "(version file says 9.5.0-dev; it differs from release v9.4.0 only in vulnerability.status and gen_ai.*, "
    "none of which are in this table, so the table is recorded as ECS 9.4.0)"
)


def load_flat(source: Path) -> dict[str, Any]:
    """Parse ecs_flat.yml into {flat name: definition}."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with source.open("rb") as handle:
        flat = yaml.load(handle, Loader=loader)  # noqa: S506 - a SafeLoader (C or Python)
    if not isinstance(flat, dict):
        raise ValueError(f"{source}: expected a mapping of flat field names, got {type(flat).__name__}")
    return flat


def selected(name: str) -> bool:
    """True when hostaudit's table should hold the ECS field `name`."""
    return name in ROOT_FIELDS or name.startswith(FIELD_SET_PREFIXES)


def build_table(flat: Mapping[str, Any], ecs_version: str, source_note: str) -> dict[str, Any]:
    """Return the table: {"ecs_version", "source", "fields": {name: {"type", "array"}}} for the selected fields."""
    fields: dict[str, dict[str, Any]] = {}
    for name in sorted(flat):
        if not selected(name):
            continue
        definition = flat[name]
        field_type = definition.get("type")
        if not isinstance(field_type, str) or not field_type:
            raise ValueError(f"ECS field {name!r} has no type")
        normalize = definition.get("normalize") or []
        fields[name] = {"array": "array" in normalize, "type": field_type}
    return {"ecs_version": ecs_version, "fields": fields, "source": source_note}


def render(table: Mapping[str, Any]) -> str:
    """Serialise the table deterministically: sorted keys, one field per line, ASCII, trailing newline."""
    lines = ["{"]
    lines.append(f' "ecs_version": {json.dumps(table["ecs_version"])},')
    lines.append(' "fields": {')
    entries = [
        f"  {json.dumps(name)}: {json.dumps(table['fields'][name], sort_keys=True)}" for name in sorted(table["fields"])
    ]
    lines.append(",\n".join(entries))
    lines.append(" },")
    lines.append(f' "source": {json.dumps(table["source"])}')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != table:  # the hand-made layout must still be exactly the table
        raise AssertionError("render() produced JSON that does not round-trip")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"ecs_flat.yml (default {DEFAULT_SOURCE})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"output (default {DEFAULT_OUTPUT})")
    parser.add_argument("--ecs-version", help="ECS release to record; required when the source is not the known one")
    parser.add_argument("--note", help="provenance note for the 'source' value; required with --ecs-version")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if --output differs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source: Path = args.source
    if not source.is_file():
        print(f"generate_fields: ECS source {source} not found; pass --source PATH/ecs_flat.yml", file=sys.stderr)
        return 2
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest == KNOWN_SOURCE_SHA256 and args.ecs_version is None and args.note is None:
        ecs_version, note = KNOWN_ECS_VERSION, KNOWN_SOURCE_NOTE
    elif args.ecs_version and args.note:
        ecs_version, note = args.ecs_version, args.note
    else:
        print(
            f"generate_fields: {source} (sha256 {digest}) is not the source the recorded ECS version was checked "
            f"against; find which ECS release it matches and pass both --ecs-version and --note",
            file=sys.stderr,
        )
        return 2
    table = build_table(load_flat(source), ecs_version, f"{note}; sha256 {digest}")
    text = render(table)
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.is_file() else ""
        if current != text:
            print(f"generate_fields: {output} is stale; re-run ops/ecs/generate_fields.py", file=sys.stderr)
            return 1
        print(f"{output}: up to date ({len(table['fields'])} fields)")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"{output}: {len(table['fields'])} fields, {len(text.encode())} bytes, ECS {ecs_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
