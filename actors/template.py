"""The index template for hostaudit's events (`hostaudit export template`): a composable template whose mappings
come from the ECS field table and the datasets' declared fields, for Elasticsearch or for OpenSearch."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pydantic import Field

from actors import __version__
from actors.datasets import BUILT_DATASETS, COMMON_FIELD_PREFIXES, COMMON_FIELDS, dataset_fields, event_field_table
from actors.ecs import EcsField, FieldTable
from actors.event import deep_merge
from actors.options import Boolean, ConfigError, NonEmptyText, Schema, Whole, validate

FLAVORS = ("elasticsearch", "opensearch")
# hostaudit: only the fields hostaudit's events can carry; ecs: every field of the table (for events that
# other tools enrich downstream), more mapping for fields that never come.
SCOPES = ("hostaudit", "ecs")
DEFAULT_PATTERN = "hostaudit-*"
DEFAULT_PRIORITY = 150  # as Beats: above Elasticsearch's built-in templates (100), below a user's own (200+)
KEYWORD_IGNORE_ABOVE = 1024  # ECS's setting on its keyword fields
SCALING_FACTOR = 1000  # ECS's scaling_factor for its scaled_float fields (cpu and memory usage)
TOTAL_FIELDS_LIMIT = 10000  # as Beats: the `ecs` scope alone has more than the default limit of 1000 fields

# ECS types the opensearch flavor replaces, so that the template loads on OpenSearch 2.7 and later (flat_object,
# OpenSearch's flattened, appeared in 2.7). The others are types OpenSearch lacks or added later:
# constant_keyword needs a `value` there; match_only_text came in 2.12 (text indexes positions too: a larger
# index, the same queries); wildcard came in 2.15 (keyword: the same values, slower leading-wildcard queries).
OPENSEARCH_FALLBACKS: Mapping[str, str] = {
    "flattened": "flat_object",
    "constant_keyword": "keyword",
    "match_only_text": "text",
    "wildcard": "keyword",
}
# Beats keys of setup.template / setup.ilm that are about loading the template, not its content: accepted
# (an Auditbeat configuration works as it is) and ignored.
IGNORED_TEMPLATE_KEYS = ("enabled", "name", "overwrite", "fields", "append_fields", "json", "type")
IGNORED_ILM_KEYS = ("check_exists", "overwrite", "policy_file", "rollover_alias", "pattern")


class TemplateSettings(Schema):
    """`setup.template.settings`: index settings (`index.*`, e.g. number_of_replicas) and `_source` options."""

    index: dict[str, Any] = {}
    source: dict[str, Any] = Field(default={}, alias="_source")


class TemplateSetup(Schema):
    """`setup.template.*`: which indices the template applies to, its priority, its settings."""

    model_config = {**Schema.model_config, "extra": "allow"}  # Beats' IGNORED_TEMPLATE_KEYS; others refused below
    pattern: NonEmptyText = DEFAULT_PATTERN
    priority: Whole(0) = DEFAULT_PRIORITY
    data_stream: Boolean = True
    settings: TemplateSettings = TemplateSettings()


class IlmSetup(Schema):
    """`setup.ilm.*`: the ILM policy the indices get (Elasticsearch only; the policy itself is not created)."""

    model_config = {**Schema.model_config, "extra": "allow"}  # Beats' IGNORED_ILM_KEYS; others refused below
    enabled: Boolean = False
    policy_name: NonEmptyText = "hostaudit"


class TemplateOptions:
    """The template's options from `setup.template.*` and `setup.ilm.*` (hostaudit ignores `setup` otherwise)."""

    def __init__(self, setup: Mapping[str, Any] | None = None) -> None:
        setup = setup or {}
        if not isinstance(setup, Mapping):
            raise ConfigError(f"setup: must be a map of settings, not {type(setup).__name__}")
        self.template = validate(TemplateSetup, setup.get("template"), "setup.template")
        self.ilm = validate(IlmSetup, setup.get("ilm"), "setup.ilm")
        _refuse_unknown("setup.template", self.template, IGNORED_TEMPLATE_KEYS)
        _refuse_unknown("setup.ilm", self.ilm, IGNORED_ILM_KEYS)


def _refuse_unknown(where: str, model: Schema, ignored: tuple[str, ...]) -> None:
    for key in model.model_extra or {}:
        if key not in ignored:
            known = sorted([*type(model).model_fields, *ignored])
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(known)})")


# --- the fields -----------------------------------------------------------------------------------------------------


def emitted_field_names(table: FieldTable) -> set[str]:
    """The names of the fields hostaudit's events can carry: the common ones (the exact names, and every table field
    under the common prefixes: event.*, agent.*, host.*, the declared system.audit.*) and each built dataset's FIELDS.
    ValueError naming a FIELDS entry that is not in the table."""
    names = set(COMMON_FIELDS) | {name for name in table.fields if name.startswith(COMMON_FIELD_PREFIXES)}
    for dataset in BUILT_DATASETS:
        fields = dataset_fields(dataset)
        if missing := sorted(fields - table.fields.keys()):
            raise ValueError(f"dataset {dataset}: FIELDS names {missing}, not in the ECS field table")
        names |= fields
    return names


def template_fields(scope: str = "hostaudit", table: FieldTable | None = None) -> dict[str, EcsField]:
    """The fields the template maps, by dotted name: those of `scope` (see SCOPES), with every ancestor that is
    itself a field of the table (an `object` or `nested` whose type must be kept)."""
    table = table or event_field_table()
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    names = set(table.fields) if scope == "ecs" else emitted_field_names(table)
    names |= {parent for name in names for parent in _ancestors(name) if parent in table.fields}
    return {name: table.fields[name] for name in sorted(names)}


def _ancestors(name: str) -> Iterable[str]:
    parts = name.split(".")
    return (".".join(parts[:depth]) for depth in range(1, len(parts)))


def field_mapping(field_type: str, flavor: str) -> dict[str, Any]:
    """The mapping of one field of ECS type `field_type` for the engine `flavor` (OPENSEARCH_FALLBACKS applied)."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, not {flavor!r}")
    if flavor == "opensearch":
        field_type = OPENSEARCH_FALLBACKS.get(field_type, field_type)
    mapping: dict[str, Any] = {"type": field_type}
    if field_type == "keyword":
        mapping["ignore_above"] = KEYWORD_IGNORE_ABOVE
    elif field_type == "scaled_float":
        mapping["scaling_factor"] = SCALING_FACTOR
    return mapping


def properties(fields: Mapping[str, EcsField], flavor: str) -> dict[str, Any]:
    """The nested `properties` of a mapping for fields by dotted name (an object or nested field's own members
    go under its `properties`). ValueError if a field of another type has members."""
    root: dict[str, Any] = {}
    for name in sorted(fields):  # a parent sorts before its members
        *parents, leaf = name.split(".")
        node = root
        for depth, part in enumerate(parents):
            entry = node.setdefault(part, {})
            if entry.get("type", "object") not in ("object", "nested"):
                raise ValueError(f"{'.'.join(parents[:depth + 1])} is a {entry['type']} field, so {name} cannot be")
            node = entry.setdefault("properties", {})
        node.setdefault(leaf, {}).update(field_mapping(fields[name].type, flavor))
    return root


# --- the template ---------------------------------------------------------------------------------------------------


def index_template(flavor: str = "elasticsearch", scope: str = "hostaudit",
                   options: TemplateOptions | None = None, replicas: int | None = None,
                   table: FieldTable | None = None) -> tuple[dict[str, Any], list[str]]:
    """The composable index template (the body of `PUT _index_template/<name>`) and the warnings for the user
    (settings the flavor cannot take, left out)."""
    options = options or TemplateOptions()
    setup = options.template
    warnings: list[str] = []
    table = table or event_field_table()
    fields = template_fields(scope, table)

    index_settings: dict[str, Any] = {"mapping": {"total_fields": {"limit": TOTAL_FIELDS_LIMIT}}}
    deep_merge(index_settings, _nested(setup.settings.index))
    if replicas is not None:
        index_settings["number_of_replicas"] = replicas
    if options.ilm.enabled:
        if flavor == "elasticsearch":
            deep_merge(index_settings, {"lifecycle": {"name": options.ilm.policy_name}})
        else:
            warnings.append("setup.ilm: OpenSearch has no ILM (its Index State Management attaches policies by "
                            "index pattern, in the policy's ism_template): left out of the template")
    if flavor == "opensearch" and "lifecycle" in index_settings:
        index_settings.pop("lifecycle")
        warnings.append("setup.template.settings.index.lifecycle: ILM settings are refused by OpenSearch: "
                        "left out of the template")

    mappings: dict[str, Any] = {
        "_meta": {"hostaudit_version": __version__, "ecs_version": table.ecs_version},
        "date_detection": False,
        # A field not in the template (e.g. added by a pipeline downstream): strings as keywords, as Beats does.
        "dynamic_templates": [{"strings_as_keyword": {
            "match_mapping_type": "string",
            "mapping": {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE},
        }}],
        "properties": properties(fields, flavor),
    }
    if setup.settings.source:
        mappings["_source"] = dict(setup.settings.source)
    template: dict[str, Any] = {
        "index_patterns": [setup.pattern],
        "priority": setup.priority,
        "_meta": {"description": f"hostaudit {__version__} events: ECS {table.ecs_version} and system.audit.*",
                  "flavor": flavor, "fields": scope},
        "template": {"settings": {"index": index_settings}, "mappings": mappings},
    }
    if setup.data_stream:
        template["data_stream"] = {}
    return template, warnings


def _nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Index settings with dotted keys (`mapping.total_fields.limit: 2000`) as nested maps, so they merge."""
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _nested(value) if isinstance(value, Mapping) else value
    return nested
