"""Configuration: defaults, -c file, secrets file, HOSTAUDIT_ env and -E merged by dynaconf, then validated."""

from __future__ import annotations

import difflib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn, Sequence

import yaml
from dynaconf.base import UPPER_DEFAULT_SETTINGS
from dynaconf.base import Settings as _DynaconfSettings
from dynaconf.loaders.base import SourceMetadata
from dynaconf.utils.parse_conf import boolean_fix, parse_conf_data

from actors.datasets import BUILT_DATASETS, PLANNED_DATASETS, check_dataset_options
from actors.options import DURATION_HINT, MIN_PERIOD, ConfigError, duration_seconds, show_duration, parse_size

log = logging.getLogger("hostaudit.config")

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "settings" / "settings.yaml"
ENV_PREFIX = "HOSTAUDIT_"
SECRETS_FILE_VARIABLE = "HOSTAUDIT_SECRETS_FILE"
REDACTED = "[redacted]"
AUTOMATIC_HANG_TIMEOUT_FLOOR = 30.0  # seconds; supervisor.hang_timeout: null = max(3 x period, this)

OUTPUTS = ("console", "file", "kafka")
LOG_LEVELS = ("debug", "info", "warning", "error")
SECRET_WORDS = ("password", "passphrase", "secret", "token")
NOT_SECRETS = frozenset({"detect_password_changes"})  # a switch, not a secret
# Standard Beats module options that hostaudit does not implement: accepted with a warning.
BEATS_MODULE_OPTIONS = frozenset({"fields", "fields_under_root", "tags", "processors", "index", "keep_null",
                                  "service", "report_changes"})
# Beats Kafka options that do not apply to hostaudit (it retries until the broker has the event, and the client
# negotiates the rest): accepted with a note. Other Beats options there (topics, codec, kerberos...) are errors.
KAFKA_IGNORED = frozenset({"version", "max_retries", "channel_buffer_size", "metadata", "worker"})
PARTITIONER_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "hash": {"hash": [], "random": True, "reachable_only": False},
    "round_robin": {"group_events": 1, "reachable_only": False},
    "random": {"group_events": 1, "reachable_only": False},
}
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
VERIFICATION_MODES = ("full", "strict", "certificate", "none")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


# --- values that must not leak, and read-only containers ---------------------------------------------------


class Secret:
    """A secret setting (a password, a passphrase). Prints, formats and exports as `[redacted]`.

    The real value is only available through `reveal()`, e.g. the Kafka output does
    `options["password"].reveal()`. Not a `str`, so it cannot be passed on by mistake as the password itself.
    Pickles with its value (the supervisor hands settings to its child processes).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(REDACTED, spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


class FrozenDict(dict):
    """A dict that refuses changes: settings are read-only. Still a dict for json, `**` and pickling."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("settings are read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _plain(value: Any, reveal: bool = False) -> Any:
    """Nested dicts/lists of YAML-safe scalars; secrets as `[redacted]` unless `reveal`."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item, reveal) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, reveal) for item in value]
    if isinstance(value, Secret):
        return value.reveal() if reveal else REDACTED
    if isinstance(value, Path):
        return str(value)
    return value


def is_secret_key(key: str) -> bool:
    """True for setting names whose values are secrets (password, key_passphrase, *secret*, *token*), except the
    switches that only mention one (`detect_password_changes`)."""
    lowered = str(key).lower()
    return any(word in lowered for word in SECRET_WORDS) and lowered.rsplit(".", 1)[-1] not in NOT_SECRETS


def _protect_secrets(value: Any, secret: bool = False) -> Any:
    if isinstance(value, dict):
        return {key: _protect_secrets(item, secret or is_secret_key(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_protect_secrets(item, secret) for item in value]
    if secret and value is not None and value != "" and not isinstance(value, (Secret, bool)):
        return Secret(str(value))
    return value


def _show(key: str, value: Any) -> str:
    """The value as it may appear in an error message: quoted, shortened, never a secret."""
    if is_secret_key(key.rsplit(".", 1)[-1]) or isinstance(value, Secret):
        return REDACTED
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the typed settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSettings:
    """One enabled dataset: how often it looks, how often it reports full state, and its own options."""

    name: str
    period: float  # seconds
    state_period: float  # seconds
    options: Mapping[str, Any]  # the `<dataset>.*` keys without the prefix, nested, e.g. {"hash": {...}}


@dataclass(frozen=True)
class SupervisorSettings:
    """How the supervisor watches and restarts its child processes (seconds)."""

    hang_timeout: float | None  # None = automatic: max(3 x period, 30 s) per dataset
    max_restarts: int
    max_restarts_window: float
    backoff_initial: float
    backoff_max: float
    failed_retry: float = 300.0  # a dataset marked failed is tried again after this, doubling up to an hour


@dataclass(frozen=True)
class OutputSettings:
    """The one enabled output and its options, defaults filled and typed.

    console: {pretty}. file: {path (str), filename, rotate_every_kb, number_of_files, permissions (int mode)}.
    kafka: {hosts (tuple), topic, key ("" = none), partition ({<one partitioner>: {...}}), required_acks,
    compression, compression_level, max_message_bytes, bulk_max_size, bulk_flush_frequency, client_id,
    timeout, broker_timeout, keep_alive, headers (tuple of {key, value}), ssl {enabled,
    certificate_authorities, certificate, key, key_passphrase (Secret|None), verification_mode},
    sasl {mechanism}, username, password (Secret|None), backoff {init, max}}; durations in seconds (float).
    """

    type: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Settings:
    """The validated, effective configuration."""

    datasets: Mapping[str, DatasetSettings]  # enabled datasets only, by name, in config order
    path_data: Path
    hostfs: Path
    output: OutputSettings
    supervisor: SupervisorSettings
    queue_disk_max_size: int  # bytes
    http_enabled: bool
    http_host: str
    http_port: int
    logging_level: str
    debug_hang_file: str  # test-only hook: while this file exists collectors make no progress; "" = off
    tree: Mapping[str, Any]  # the whole effective configuration, nested (secrets as Secret), for export

    def hang_timeout_for(self, dataset: str) -> float:
        """Seconds without progress after which the supervisor kills `dataset`'s process."""
        if self.supervisor.hang_timeout is not None:
            return self.supervisor.hang_timeout
        return max(3 * self.datasets[dataset].period, AUTOMATIC_HANG_TIMEOUT_FLOOR)


# --- reading the layers -------------------------------------------------------------------------------------


class _WholeList:
    """A list handed to dynaconf as one opaque value, so a later layer replaces it instead of appending."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _wrap_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _wrap_lists(item) for key, item in value.items()}
    if isinstance(value, list):
        return _WholeList(value)
    return value


def _unwrap_lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _unwrap_lists(item) for key, item in value.items()}
    if isinstance(value, _WholeList):
        return [_unwrap_lists(item) for item in value.items]
    if isinstance(value, list):
        return [_unwrap_lists(item) for item in value]
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _merge_key(target: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put `value` at `key`, merging maps: `a.b: 1` next to `a: {c: 2}` gives `a: {b: 1, c: 2}`."""
    existing = target.get(key)
    if key not in target or existing is None:
        target[key] = value
    elif isinstance(existing, dict) and isinstance(value, dict):
        for inner_key, inner_value in value.items():
            _merge_key(existing, inner_key, inner_value, _join(where, key))
    elif isinstance(existing, dict) or isinstance(value, dict):
        if value is None:
            return
        raise ConfigError(f"{_join(where, key)}: given both as a value and as a map of settings")
    else:
        target[key] = value


def _overlay(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`: maps merge key by key, anything else in `extra` replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _expand(value: Any, where: str = "") -> Any:
    """Expand dotted keys into nested maps, recursively, also in maps inside lists."""
    if isinstance(value, Mapping):
        expanded: dict[str, Any] = {}
        for raw_key, item in value.items():
            if isinstance(raw_key, bool) or raw_key is None or not isinstance(raw_key, (str, int, float)):
                raise ConfigError(f"{where or 'top level'}: {raw_key!r} is not a setting name")
            key = str(raw_key)
            parts = key.split(".")
            if not all(part.strip() for part in parts):
                raise ConfigError(f"{_join(where, key)}: empty part in a dotted setting name")
            nested = _expand(item, _join(where, key))
            for part in reversed(parts[1:]):
                nested = {part: nested}
            _merge_key(expanded, parts[0], nested, where)
        return expanded
    if isinstance(value, (list, tuple)):
        return [_expand(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def _yaml_error(source: str, error: yaml.YAMLError) -> ConfigError:
    """One line naming the file and line; never the offending text (it could be a password)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or type(error).__name__
    where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
    return ConfigError(f"{where}: not valid YAML: {' '.join(str(problem).split())}")


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A settings file needs few YAML aliases (`*name`). An "alias bomb" (billion laughs: ten aliases of ten
# aliases of ...) is a small file whose tree is huge; merging and validating it cost 16 s of CPU. Each file's
# node graph is checked after parsing (cheap: aliases are shared nodes) and before anything walks the tree.
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000  # values in the tree once every alias is expanded


class _YamlLimit(Exception):
    """A YAML document refused for its aliases: str() says why, `mark` is where (or None)."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.mark = mark


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a composed YAML document with more than MAX_YAML_ALIASES aliases, a recursive alias, or more
    than MAX_YAML_NODES values once aliases are expanded. Linear in the number of distinct nodes."""
    aliases = 0
    sizes: dict[int, int] = {}  # id(node) -> values under it once expanded (memoised: shared nodes count once)
    seen: set[int] = set()  # nodes met once already: meeting one again is an alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        identity = id(node)
        if done:
            open_nodes.discard(identity)
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value
            sizes[identity] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[identity] > MAX_YAML_NODES:
                raise _YamlLimit(f"YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)",
                                 node.start_mark)
            continue
        if identity in open_nodes:
            raise _YamlLimit("a YAML alias refers to a node that contains it", node.start_mark)
        if identity in seen:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise _YamlLimit(f"more than {MAX_YAML_ALIASES} YAML aliases", node.start_mark)
            if identity in sizes:
                continue
        seen.add(identity)
        if isinstance(node, yaml.ScalarNode):
            sizes[identity] = 1
            continue
        open_nodes.add(identity)
        stack.append((node, True))
        children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) \
            else node.value
        for child in reversed(children):
            if id(child) in open_nodes:
                raise _YamlLimit("a YAML alias refers to a node that contains it", node.start_mark)
            stack.append((child, False))


def _load_yaml(text: str) -> Any:
    """yaml.safe_load with the alias limits above (raises _YamlLimit or yaml.YAMLError)."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_file(path: Path, what: str) -> dict[str, Any]:
    """Parse a YAML (or, for secrets files, JSON/TOML) settings file into expanded nested maps."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what}: {error.strerror}") from None
    if path.suffix.lower() == ".toml":
        import tomllib  # only secrets files may be TOML

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    else:
        try:
            data = _load_yaml(text)
        except yaml.YAMLError as error:
            raise _yaml_error(str(path), error) from None
        except _YamlLimit as error:
            where = f"{path}: line {error.mark.line + 1}" if error.mark is not None else str(path)
            raise ConfigError(f"{where}: {error}: refused") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level of the {what} must be a map of settings, "
                          f"not a {type(data).__name__}")
    return _expand(data)


def _environment_layer(environ: Mapping[str, str], store: _DynaconfSettings) -> dict[str, Any]:
    """HOSTAUDIT_A__B=value -> {a: {b: value}}, the value parsed by dynaconf as a TOML scalar."""
    layer: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == SECRETS_FILE_VARIABLE:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if not all(path):
            log.debug("ignoring environment variable %s: empty setting name", name)
            continue
        value = parse_conf_data(boolean_fix(environ[name]), tomlfy=True, box_settings=store)
        nested: Any = _expand(value, name)
        for part in reversed(path):
            nested = {part: nested}
        layer = _overlay(layer, nested)
    return layer


def _overrides_layer(overrides: Sequence[str]) -> dict[str, Any]:
    """-E key=value (Beats): dotted key, the value parsed as YAML; a later -E wins."""
    layer: dict[str, Any] = {}
    for override in overrides:
        key, equals, text = override.partition("=")
        key = key.strip()
        if not equals or not key:
            shown = f" {key}" if key and not is_secret_key(key) else ""
            raise ConfigError(f"-E{shown}: expected key=value, e.g. -E logging.level=debug")
        try:
            value = _load_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"-E {key}: the value is not valid YAML (quote it)") from None
        except _YamlLimit as error:
            raise ConfigError(f"-E {key}: {error}: refused") from None
        layer = _overlay(layer, _expand({key: value}))
    return layer


def _drop_reserved(layer: dict[str, Any], source: str) -> dict[str, Any]:
    """Keep names dynaconf would treat as its own settings or merge markers out of the merge."""
    reserved = set(UPPER_DEFAULT_SETTINGS)

    def clean(value: Any, top: bool) -> Any:
        if isinstance(value, dict):
            kept = {}
            for key, item in value.items():
                upper = key.upper()
                if upper.startswith("DYNACONF") or upper.endswith("_FOR_DYNACONF") or (
                        top and (upper in reserved or key.startswith("_") or "__" in key)):
                    log.debug("%s: ignoring %r, a name reserved by dynaconf", source, key)
                    continue
                kept[key] = clean(item, False)
            return kept
        if isinstance(value, list):
            return [clean(item, False) for item in value]
        return value

    return clean(layer, True)


def _sections_from_none(layer: Any, defaults: Any) -> Any:
    """`output.file:` with nothing under it names the section: turn None into {} where a map is expected."""
    if isinstance(layer, dict) and isinstance(defaults, dict):
        return {key: ({} if value is None and isinstance(defaults.get(key), dict)
                      else _sections_from_none(value, defaults.get(key)))
                for key, value in layer.items()}
    return layer


def _get(tree: Any, path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _has(tree: Any, path: Sequence[str]) -> bool:
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def _names_non_secret(value: Any) -> bool:
    """True when a configured section sets anything but secrets (an empty section counts)."""
    if not isinstance(value, Mapping) or not value:
        return True
    return any(not is_secret_key(key) and _names_non_secret(item) for key, item in value.items())


def _configured(layers: Sequence[dict[str, Any]], path: Sequence[str]) -> bool:
    return any(_has(layer, path) and _names_non_secret(_get(layer, path)) for layer in layers)


class _Store(_DynaconfSettings):
    """dynaconf settings that read no file, no .env and no environment variable by themselves.

    hostaudit parses each layer itself (for file:line errors, dotted keys and Auditbeat's shape) and hands it
    to `update()`; dynaconf merges the layers. `environ` is empty so dynaconf's own `*_FOR_DYNACONF`
    switches cannot be changed from the environment of whoever runs hostaudit.
    """

    @property
    def environ(self) -> Mapping[str, str]:
        return {}

    @property
    def settings_module(self) -> list[str]:
        return []  # dynaconf's own reads os.environ["SETTINGS_FILE_FOR_DYNACONF"]


_DYNACONF_OPTIONS: dict[str, Any] = {
    "SETTINGS_FILE_FOR_DYNACONF": [],  # no settings.toml / settings.yaml discovery
    "SECRETS_FOR_DYNACONF": None,
    "INCLUDES_FOR_DYNACONF": [],
    "PRELOAD_FOR_DYNACONF": [],
    "LOADERS_FOR_DYNACONF": [],  # no env loader (it also reads DYNACONF_*); hostaudit reads HOSTAUDIT_*
    "CORE_LOADERS_FOR_DYNACONF": [],
    "LOAD_DOTENV_FOR_DYNACONF": False,
    "ENVIRONMENTS_FOR_DYNACONF": False,
    "ENVVAR_PREFIX_FOR_DYNACONF": ENV_PREFIX.rstrip("_"),
    "MERGE_ENABLED_FOR_DYNACONF": True,  # maps merge key by key across layers
    "DOTTED_LOOKUP_FOR_DYNACONF": True,
    "NESTED_SEPARATOR_FOR_DYNACONF": "__",
    "INDEX_SEPARATOR_FOR_DYNACONF": None,
    "AUTO_CAST_FOR_DYNACONF": False,  # no @format/@read_file/@jinja tokens: values are taken literally
    "SYSENV_FALLBACK_FOR_DYNACONF": False,
    "VALIDATE_ON_UPDATE_FOR_DYNACONF": False,
    "REDIS_ENABLED_FOR_DYNACONF": False,
    "VAULT_ENABLED_FOR_DYNACONF": False,
    "YAML_LOADER_FOR_DYNACONF": "safe_load",
    "ROOT_PATH_FOR_DYNACONF": str(DEFAULTS_FILE.parent),
    "FRESH_VARS_FOR_DYNACONF": [],
    "SKIP_FILES_FOR_DYNACONF": [],
}


# --- validation helpers -------------------------------------------------------------------------------------


def _fail(key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{key}: {problem}")


def _map(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(key, f"must be a map of settings, not {_show(key, value)}")
    return dict(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    _fail(key, f"{_show(key, value)} is not true or false")


def _int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"{_show(key, value)} is not a whole number")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None
                  else f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        _fail(key, f"{value} is out of range (must be {bounds})")
    return value


def _str(key: str, value: Any, allow_empty: bool = True) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        _fail(key, f"{_show(key, value)} is not a string")
    if not allow_empty and not value.strip():
        _fail(key, "must not be empty")
    return value


def _optional_str(key: str, value: Any) -> str | None:
    return None if value is None or value == "" else _str(key, value)


def _secret(key: str, value: Any) -> Secret | None:
    if value is None or value == "":
        return None
    if not isinstance(value, Secret):
        _fail(key, "must be a string")
    return value


def _str_list(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        _fail(key, f"must be a list of strings, not {_show(key, value)}")
    return [_str(f"{key}[{index}]", item, allow_empty=False) for index, item in enumerate(value)]


def _duration(key: str, value: Any, allow_zero: bool = False, minimum: float | None = None) -> float:
    """Seconds of a duration setting: finite, at most MAX_DURATION, > 0 (or >= 0), and at least `minimum`."""
    try:
        seconds = duration_seconds(value)
    except ConfigError as error:
        _fail(key, str(error))
    if seconds < 0 or seconds == 0 and not allow_zero:
        _fail(key, f"{value!r} must be {'0 or more' if allow_zero else 'greater than 0'} ({DURATION_HINT})")
    if minimum is not None and seconds < minimum:
        _fail(key, f"{value!r} is shorter than {show_duration(minimum)}, the shortest accepted here")
    return seconds


def _period(key: str, value: Any) -> float:
    """A dataset's period or state.period: between 10 ms and a year."""
    return _duration(key, value, minimum=MIN_PERIOD)


def _size(key: str, value: Any) -> int:
    try:
        size = parse_size(value)
    except ConfigError as error:
        _fail(key, str(error))
    if size <= 0:
        _fail(key, f"{value!r} must be greater than 0")
    return size


def _choice(key: str, value: Any, choices: Sequence[str], upper: bool = False) -> str:
    text = _str(key, value).strip()
    text = text.upper() if upper else text.lower()
    if text not in choices:
        _fail(key, f"{_show(key, value)} is not one of {', '.join(choices)}")
    return text


def _unknown_keys(key: str, section: Mapping[str, Any], known: Iterable[str]) -> None:
    for name in section:
        if name not in known:
            _fail(_join(key, name), "unknown setting")


# --- validation ---------------------------------------------------------------------------------------------


def _module_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    key = "hostaudit.module_defaults"
    defaults = _map(key, _get(tree, ("hostaudit", "module_defaults")))
    known_datasets = set(BUILT_DATASETS) | set(PLANNED_DATASETS)
    _unknown_keys(key, defaults, {"period", "state", *known_datasets})
    _period(f"{key}.period", defaults.get("period"))
    state = _map(f"{key}.state", defaults.get("state"))
    _unknown_keys(f"{key}.state", state, {"period"})
    _period(f"{key}.state.period", state.get("period"))
    for name in known_datasets & set(defaults):
        options = _map(f"{key}.{name}", defaults[name])
        dataset_state = _map(f"{key}.{name}.state", options.get("state"))
        if dataset_state.get("period") is not None:
            _period(f"{key}.{name}.state.period", dataset_state["period"])
    return defaults


def _only_built(entries: Any) -> list[Any]:
    """The defaults' module list, keeping only the datasets hostaudit has built."""
    kept = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("datasets"), list):
            datasets = [name for name in entry["datasets"] if name in BUILT_DATASETS]
            if datasets:
                kept.append({**entry, "datasets": datasets})
    return kept


def _dataset_settings(tree: dict[str, Any], root: str, user_modules: bool) -> dict[str, DatasetSettings]:
    defaults = _module_defaults(tree)
    hostaudit = _map("hostaudit", tree.get("hostaudit"))
    _unknown_keys("hostaudit", hostaudit, {"modules", "module_defaults"})
    entries = hostaudit.get("modules")
    if not user_modules:
        entries = _only_built(entries)
        hostaudit["modules"] = entries
        tree["hostaudit"] = hostaudit
    if not isinstance(entries, list):
        _fail(root, "must be a list of modules, e.g. [{module: system, datasets: [host]}]")
    known = list(BUILT_DATASETS) + [name for name in PLANNED_DATASETS if name not in BUILT_DATASETS]
    datasets: dict[str, DatasetSettings] = {}
    listed_in: dict[str, str] = {}
    not_built: set[str] = set()
    for index, raw_entry in enumerate(entries):
        where = f"{root}[{index}]"
        entry = _map(where, raw_entry)
        if not _bool(f"{where}.enabled", entry.get("enabled", True)):
            log.debug("%s: enabled: false, skipped", where)
            continue
        module = entry.get("module")
        if module is None:
            _fail(f"{where}.module", "required (module: system)")
        if module != "system":
            _fail(f"{where}.module", f"unknown module {_show('module', module)}: hostaudit implements "
                                     "the Auditbeat module 'system' only")
        names = entry.get("datasets")
        if names is None:
            _fail(f"{where}.datasets", "required: a list of datasets, e.g. [host]")
        names = _str_list(f"{where}.datasets", names)
        if not names:
            _fail(f"{where}.datasets", "lists no dataset")
        for name in names:
            if name not in known:
                _fail(f"{where}.datasets", f"unknown dataset {name!r} (known: {', '.join(known)})")
            if name in listed_in:
                _fail(f"{where}.datasets", f"dataset {name!r} is listed twice (also in {listed_in[name]})")
            listed_in[name] = where
        for name in entry:
            if name in BEATS_MODULE_OPTIONS:
                log.warning("%s.%s: not supported by hostaudit, ignored", where, name)
            elif name in known and name not in names:
                log.debug("%s.%s: options of a dataset this module does not run, ignored", where, name)
            elif name not in {"module", "datasets", "period", "state", "enabled", *known}:
                nearest = difflib.get_close_matches(str(name), ["module", "datasets", "period", "state",
                                                                "enabled", *names], n=1)
                hint = f" (did you mean {nearest[0]}?)" if nearest else ""
                _fail(f"{where}.{name}", f"unknown setting{hint}")
        period = _period(f"{where}.period", entry["period"] if entry.get("period") is not None
                           else defaults.get("period"))
        entry_state = _map(f"{where}.state", entry.get("state"))
        for name in names:
            options = {key: value for key, value in _map(f"hostaudit.module_defaults.{name}",
                                                         defaults.get(name)).items() if key != "state"}
            own = _map(f"{where}.{name}", entry.get(name))
            options = _overlay(options, own)  # the entry's options win over module_defaults.<dataset>
            own_state = _map(f"{where}.{name}.state", own.get("state"))
            if own_state.get("period") is not None:
                state_key, state_value = f"{where}.{name}.state.period", own_state["period"]
            elif entry_state.get("period") is not None:
                state_key, state_value = f"{where}.state.period", entry_state["period"]
            elif _get(defaults, (name, "state", "period")) is not None:
                state_key = f"hostaudit.module_defaults.{name}.state.period"
                state_value = _get(defaults, (name, "state", "period"))
            else:
                state_key = "hostaudit.module_defaults.state.period"
                state_value = _get(defaults, ("state", "period"))
            state_period = _period(state_key, state_value)
            if isinstance(options.get("state"), dict):
                rest = {key: value for key, value in options["state"].items() if key != "period"}
                options = {key: value for key, value in options.items() if key != "state"}
                if rest:
                    options["state"] = rest
            if name not in BUILT_DATASETS:
                not_built.add(name)
            else:
                check_dataset_options(name, options)  # its options.py: refused here, not in a crashing child
            datasets[name] = DatasetSettings(name, period, state_period, _freeze(options))
    if not_built:
        raise ConfigError(f"{root}: datasets not built yet: {', '.join(sorted(not_built))} "
                          f"(built: {', '.join(BUILT_DATASETS)})")
    if not datasets:
        _fail(root, "no dataset is enabled")
    return datasets


def _path_data(tree: dict[str, Any]) -> Path:
    path = _map("path", tree.get("path"))
    raw = path.get("data")
    if raw is None or raw == "":
        data = _default_path_data()
    else:
        data = Path(_str("path.data", raw)).expanduser()
    data = data if data.is_absolute() else Path.cwd() / data
    tree["path"] = {**path, "data": str(data)}
    return data


def _effective_uid() -> int:
    """The effective uid (a function so tests can pretend to be root)."""
    return os.geteuid()


def _default_path_data() -> Path:
    if _effective_uid() == 0:
        return Path("/var/lib/hostaudit")
    return Path("~/.local/share/hostaudit").expanduser()


def _hostfs(tree: dict[str, Any]) -> Path:
    raw = tree.get("hostfs")
    hostfs = Path(_str("hostfs", "/" if raw is None or raw == "" else raw)).expanduser()
    hostfs = hostfs if hostfs.is_absolute() else Path.cwd() / hostfs
    if not hostfs.is_dir():
        _fail("hostfs", f"{hostfs} is not an existing directory")
    tree["hostfs"] = str(hostfs)
    return hostfs


def _console_options(section: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    _unknown_keys("output.console", section, schema)
    return {"pretty": _bool("output.console.pretty", section.get("pretty"))}


def _file_options(section: dict[str, Any], schema: Mapping[str, Any], path_data: Path) -> dict[str, Any]:
    key = "output.file"
    _unknown_keys(key, section, schema)
    raw_path = section.get("path")
    path = path_data / "output" if raw_path is None or raw_path == "" else Path(_str(f"{key}.path", raw_path))
    path = path.expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    filename = _str(f"{key}.filename", section.get("filename"), allow_empty=False)
    if "/" in filename or filename in (".", ".."):
        _fail(f"{key}.filename", f"{filename!r} must be a file name, not a path")
    permissions = section.get("permissions")  # YAML 0600 is already the number 0o600; a string is octal
    if isinstance(permissions, str) and re.fullmatch(r"\s*0?[0-7]{1,3}\s*", permissions):
        permissions = int(permissions, 8)
    if isinstance(permissions, bool) or not isinstance(permissions, int) or not 0 <= permissions <= 0o777:
        _fail(f"{key}.permissions", f"{_show(key, permissions)} is not a file mode such as 0600")
    mode = permissions
    return {"path": str(path), "filename": filename,
            "rotate_every_kb": _int(f"{key}.rotate_every_kb", section.get("rotate_every_kb"), 1),
            "number_of_files": _int(f"{key}.number_of_files", section.get("number_of_files"), 2, 1024),
            "permissions": mode}


def _host_port(key: str, value: str) -> str:
    host, colon, port = value.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        _fail(key, f"{value!r} is not host:port (e.g. localhost:9092)")
    return value.strip()


def _partition(section: Mapping[str, Any], user_layers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    key = "output.kafka.partition"
    partition = _map(key, section.get("partition"))
    for name in partition:
        if name not in PARTITIONER_DEFAULTS:
            _fail(f"{key}.{name}", "unknown partitioner (use hash, round_robin or random)")
    chosen = [name for name in partition if _configured(user_layers, ("output", "kafka", "partition", name))]
    chosen = chosen or list(partition) or ["hash"]
    if len(chosen) > 1:
        _fail(key, f"choose one partitioner, found: {', '.join(chosen)}")
    name = chosen[0]
    options = {**PARTITIONER_DEFAULTS[name], **_map(f"{key}.{name}", partition.get(name))}
    _unknown_keys(f"{key}.{name}", options, PARTITIONER_DEFAULTS[name])
    where = f"{key}.{name}"
    if name == "hash":
        checked: dict[str, Any] = {"hash": _str_list(f"{where}.hash", options["hash"]),
                                   "random": _bool(f"{where}.random", options["random"])}
    else:
        checked = {"group_events": _int(f"{where}.group_events", options["group_events"], 1)}
    checked["reachable_only"] = _bool(f"{where}.reachable_only", options["reachable_only"])
    return {name: checked}


def _kafka_options(section: dict[str, Any], schema: Mapping[str, Any], user_layers: Sequence[dict[str, Any]],
                   enabled: bool) -> dict[str, Any]:
    key = "output.kafka"
    for name in section:
        if name in KAFKA_IGNORED and name not in schema:
            if enabled:
                log.warning("%s.%s: not used by hostaudit, ignored", key, name)
        elif name not in schema:
            _fail(f"{key}.{name}", "unknown setting")
    ssl = _map(f"{key}.ssl", section.get("ssl"))
    _unknown_keys(f"{key}.ssl", ssl, _map(f"{key}.ssl", schema.get("ssl")))
    sasl = _map(f"{key}.sasl", section.get("sasl"))
    _unknown_keys(f"{key}.sasl", sasl, _map(f"{key}.sasl", schema.get("sasl")))
    backoff = _map(f"{key}.backoff", section.get("backoff"))
    _unknown_keys(f"{key}.backoff", backoff, _map(f"{key}.backoff", schema.get("backoff")))
    partition = _partition(section, user_layers)
    hosts = [_host_port(f"{key}.hosts[{index}]", host)
             for index, host in enumerate(_str_list(f"{key}.hosts", section.get("hosts")))]
    if enabled and section.get("version") is not None:
        log.info("%s.version: ignored, the Kafka client negotiates the protocol version", key)
    required_acks = _int(f"{key}.required_acks", section.get("required_acks"), -1, 1)
    if enabled and required_acks != -1:
        # kafka-python would silently turn idempotence off for acks != all; hostaudit refuses instead.
        _fail(f"{key}.required_acks", f"{required_acks} conflicts with idempotent, at-least-once delivery "
              "(enable_idempotence needs -1, all in-sync replicas)")
    compression = section.get("compression")
    compression = "none" if compression is False or compression in ("no", "off") else compression
    compression = _choice(f"{key}.compression", compression, COMPRESSIONS)
    compression_level = _int(f"{key}.compression_level", section.get("compression_level"))
    if compression == "gzip" and not 0 <= compression_level <= 9:
        _fail(f"{key}.compression_level", f"{compression_level} is out of range for gzip (must be 0 to 9)")

    headers = []
    raw_headers = section.get("headers") or []
    if not isinstance(raw_headers, list):
        _fail(f"{key}.headers", "must be a list of {key: ..., value: ...}")
    for index, raw_header in enumerate(raw_headers):
        where = f"{key}.headers[{index}]"
        header = _map(where, raw_header)
        _unknown_keys(where, header, ("key", "value"))
        headers.append({"key": _str(f"{where}.key", header.get("key"), allow_empty=False),
                        "value": _str(f"{where}.value", header.get("value", ""))})

    ssl_enabled = ssl.get("enabled")
    ssl_enabled = (_configured(user_layers, ("output", "kafka", "ssl")) if ssl_enabled is None
                   else _bool(f"{key}.ssl.enabled", ssl_enabled))
    authorities = _str_list(f"{key}.ssl.certificate_authorities", ssl.get("certificate_authorities"))
    certificate = _optional_str(f"{key}.ssl.certificate", ssl.get("certificate"))
    private_key = _optional_str(f"{key}.ssl.key", ssl.get("key"))
    if enabled and (certificate is None) != (private_key is None):
        _fail(f"{key}.ssl.{'key' if private_key is None else 'certificate'}",
              "required with ssl.certificate and ssl.key: give both or neither")
    if enabled and ssl_enabled:
        files = [(f"{key}.ssl.certificate_authorities[{index}]", path) for index, path in enumerate(authorities)]
        files += [(f"{key}.ssl.{name}", path) for name, path in (("certificate", certificate), ("key", private_key))
                  if path is not None]
        for where, path in files:
            if not Path(path).expanduser().is_file():
                _fail(where, f"{path} is not an existing file")
    ssl_options = {
        "enabled": ssl_enabled, "certificate_authorities": authorities, "certificate": certificate,
        "key": private_key, "key_passphrase": _secret(f"{key}.ssl.key_passphrase", ssl.get("key_passphrase")),
        "verification_mode": _choice(f"{key}.ssl.verification_mode", ssl.get("verification_mode"),
                                     VERIFICATION_MODES),
    }

    username = _optional_str(f"{key}.username", section.get("username"))
    password = _secret(f"{key}.password", section.get("password"))
    if enabled and username is not None and password is None:
        _fail(f"{key}.password", "required when output.kafka.username is set")
    if enabled and password is not None and username is None:
        _fail(f"{key}.username", "required when output.kafka.password is set")
    mechanism = sasl.get("mechanism")
    mechanism = (None if mechanism in (None, "") and username is None
                 else "PLAIN" if mechanism in (None, "")
                 else _choice(f"{key}.sasl.mechanism", mechanism, SASL_MECHANISMS, upper=True))

    backoff_init = _duration(f"{key}.backoff.init", backoff.get("init"))
    backoff_max = _duration(f"{key}.backoff.max", backoff.get("max"))
    if backoff_max < backoff_init:
        _fail(f"{key}.backoff.max", "must not be less than output.kafka.backoff.init")

    if enabled and not hosts:
        _fail(f"{key}.hosts", 'required when the Kafka output is enabled, e.g. ["localhost:9092"]')
    return {
        "hosts": hosts,
        "topic": _str(f"{key}.topic", section.get("topic"), allow_empty=False),
        "key": _optional_str(f"{key}.key", section.get("key")) or "",
        "partition": partition,
        "required_acks": required_acks,
        "compression": compression,
        "compression_level": compression_level,
        "max_message_bytes": _int(f"{key}.max_message_bytes", section.get("max_message_bytes"), 1),
        "bulk_max_size": _int(f"{key}.bulk_max_size", section.get("bulk_max_size"), 1),
        "bulk_flush_frequency": _duration(f"{key}.bulk_flush_frequency", section.get("bulk_flush_frequency"),
                                          allow_zero=True),
        "client_id": _str(f"{key}.client_id", section.get("client_id"), allow_empty=False),
        "timeout": _duration(f"{key}.timeout", section.get("timeout")),
        "broker_timeout": _duration(f"{key}.broker_timeout", section.get("broker_timeout")),
        "keep_alive": _duration(f"{key}.keep_alive", section.get("keep_alive"), allow_zero=True),
        "headers": headers,
        "ssl": ssl_options,
        "sasl": {"mechanism": mechanism},
        "username": username,
        "password": password,
        "backoff": {"init": backoff_init, "max": backoff_max},
    }


def _output_settings(tree: dict[str, Any], schema: Mapping[str, Any], user_layers: Sequence[dict[str, Any]],
                     path_data: Path) -> OutputSettings:
    outputs = _map("output", tree.get("output"))
    sections = {name: _map(f"output.{name}", outputs.get(name)) for name in OUTPUTS}
    enabled: dict[str, bool] = {}
    for name in OUTPUTS:
        explicit = sections[name].get("enabled")
        enabled[name] = (_configured(user_layers, ("output", name)) if explicit is None
                         else _bool(f"output.{name}.enabled", explicit))
    others = []
    for name, section in outputs.items():
        if name in OUTPUTS:
            continue
        explicit = section.get("enabled") if isinstance(section, Mapping) else None
        if (explicit is None and _configured(user_layers, ("output", name))) or (
                explicit is not None and _bool(f"output.{name}.enabled", explicit)):
            others.append(name)
    found = [name for name in OUTPUTS if enabled[name]] + others
    if len(found) > 1:
        _fail("output", f"only one output can be enabled, found: {', '.join(found)}")
    if others:
        _fail(f"output.{others[0]}", "not supported by hostaudit (use console, file or kafka)")
    if not found:
        if sections["console"].get("enabled") is False:
            _fail("output", "no output is enabled (enable one of console, file, kafka)")
        enabled["console"] = True
        found = ["console"]

    output_schema = _map("output", schema.get("output"))
    options = {
        "console": _console_options(sections["console"], output_schema["console"]),
        "file": _file_options(sections["file"], output_schema["file"], path_data),
        "kafka": _kafka_options(sections["kafka"], output_schema["kafka"], user_layers, enabled["kafka"]),
    }
    for name in OUTPUTS:  # the effective values, for export
        sections[name]["enabled"] = enabled[name]
    sections["file"]["path"] = options["file"]["path"]
    sections["file"]["permissions"] = f"0{options['file']['permissions']:o}"
    kafka = options["kafka"]
    sections["kafka"]["partition"] = kafka["partition"]
    sections["kafka"]["ssl"] = {**sections["kafka"].get("ssl", {}), "enabled": kafka["ssl"]["enabled"]}
    sections["kafka"]["sasl"] = {**sections["kafka"].get("sasl", {}), "mechanism": kafka["sasl"]["mechanism"]}
    tree["output"] = {**outputs, **sections}
    return OutputSettings(found[0], _freeze(options[found[0]]))


def _supervisor_settings(tree: dict[str, Any]) -> SupervisorSettings:
    key = "supervisor"
    section = _map(key, tree.get(key))
    _unknown_keys(key, section, ("hang_timeout", "max_restarts", "max_restarts_window", "backoff", "failed_retry"))
    backoff = _map(f"{key}.backoff", section.get("backoff"))
    _unknown_keys(f"{key}.backoff", backoff, ("initial", "max"))
    hang = section.get("hang_timeout")
    initial = _duration(f"{key}.backoff.initial", backoff.get("initial"))
    maximum = _duration(f"{key}.backoff.max", backoff.get("max"))
    if maximum < initial:
        _fail(f"{key}.backoff.max", "must not be less than supervisor.backoff.initial")
    return SupervisorSettings(
        hang_timeout=None if hang is None or hang == "" else _duration(f"{key}.hang_timeout", hang),
        max_restarts=_int(f"{key}.max_restarts", section.get("max_restarts"), 0),
        max_restarts_window=_duration(f"{key}.max_restarts_window", section.get("max_restarts_window")),
        backoff_initial=initial,
        backoff_max=maximum,
        failed_retry=_duration(f"{key}.failed_retry", section.get("failed_retry", "5m")),
    )


def format_string_fields(template: str) -> list[str]:
    """The fields a Beats format string (`x-%{[process.name]}`) needs, those without a `:default`, in order.

    Uses the Kafka output's own FormatString: rendered against a document that grows by each field it reports
    missing (KeyError), until it renders."""
    from actors.outputs.kafka import FormatString

    format_string = FormatString(template)
    document: dict[str, Any] = {}
    needed: list[str] = []
    for _ in range(template.count("%{") + 1):
        try:
            format_string.render(document)
            break
        except KeyError as missing:
            field = str(missing.args[0])
            if field in needed:
                break  # cannot happen with FormatString's lookup; never loop on it
            needed.append(field)
            place = document
            *parents, leaf = field.split(".")
            for part in parents:
                if not isinstance(place.get(part), dict):
                    place[part] = {}
                place = place[part]
            if place.get(leaf) is None:
                place[leaf] = "x"
    return needed


def kafka_routing_warnings(settings: Settings) -> list[str]:
    """One line per field that output.kafka.topic or .key needs (no default) and an enabled dataset never
    sets: that dataset's events could not be routed and the Kafka output would refuse them."""
    from actors.datasets import dataset_sets_field

    if settings.output.type != "kafka":
        return []
    warnings = []
    for name in ("topic", "key"):
        template = settings.output.options.get(name) or ""
        if "%{" not in template:
            continue
        for field in format_string_fields(template):
            lacking = [dataset for dataset in settings.datasets if not dataset_sets_field(dataset, field)]
            if lacking:
                warnings.append(
                    f"output.kafka.{name}: %{{[{field}]}} has no default and dataset{'s' if len(lacking) > 1 else ''} "
                    f"{', '.join(lacking)} never set{'' if len(lacking) > 1 else 's'} {field}: the Kafka output "
                    f"will refuse those events (give a default, e.g. %{{[{field}]:none}})")
    return warnings


def _log_unknown(tree: Mapping[str, Any], schema: Mapping[str, Any], where: str = "") -> None:
    """Beats ignores settings it does not know: say so at debug level (sections hostaudit owns are checked)."""
    for key, value in tree.items():
        if key not in schema:
            log.debug("%s: not a hostaudit setting, ignored", _join(where, key))
        elif isinstance(value, Mapping) and isinstance(schema[key], Mapping) and not where:
            _log_unknown(value, schema[key], key)


# --- loading ------------------------------------------------------------------------------------------------


def _normalise_layer(layer: dict[str, Any], defaults: dict[str, Any], source: str) -> tuple[dict[str, Any], str]:
    """Drop dynaconf-reserved names, read `section:` (null) as an empty section, and move Auditbeat's
    `auditbeat.modules` to `hostaudit.modules`. Returns the layer and which root it named modules under."""
    layer = _sections_from_none(_drop_reserved(layer, source), defaults)
    auditbeat, hostaudit = layer.get("auditbeat"), layer.get("hostaudit")
    has_auditbeat = isinstance(auditbeat, dict) and "modules" in auditbeat
    has_hostaudit = isinstance(hostaudit, dict) and "modules" in hostaudit
    if has_auditbeat and has_hostaudit:
        raise ConfigError(f"{source}: hostaudit.modules and auditbeat.modules are both set: keep one")
    if not has_auditbeat:
        return layer, "hostaudit.modules" if has_hostaudit else ""
    layer = dict(layer)
    rest = {key: value for key, value in auditbeat.items() if key != "modules"}
    if rest:
        layer["auditbeat"] = rest
    else:
        del layer["auditbeat"]
    layer["hostaudit"] = {**(hostaudit if isinstance(hostaudit, dict) else {}), "modules": auditbeat["modules"]}
    return layer, "auditbeat.modules"


def load_settings(config_file: str | Path | None = None, overrides: Sequence[str] = (),
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Load defaults, the -c file, the secrets file, HOSTAUDIT_* variables and -E overrides; validate.

    Raises ConfigError (one line naming the setting or file) for anything the user can fix.
    `environ` defaults to os.environ; only variables starting with HOSTAUDIT_ are read.
    """
    environ = os.environ if environ is None else environ
    if not DEFAULTS_FILE.is_file():
        raise ConfigError(f"{DEFAULTS_FILE}: the defaults file is missing (a broken install?)")
    defaults = _read_file(DEFAULTS_FILE, "defaults file")
    store = _Store(**_DYNACONF_OPTIONS)

    sources: list[tuple[str, str, dict[str, Any]]] = []
    if config_file is not None:
        path = Path(config_file).expanduser()
        sources.append(("yaml", str(path), _read_file(path, "config file")))
    secrets_file = environ.get(SECRETS_FILE_VARIABLE, "")
    if secrets_file:
        path = Path(secrets_file).expanduser()
        if path.suffix.lower() not in (".yaml", ".yml", ".json", ".toml"):
            raise ConfigError(f"{SECRETS_FILE_VARIABLE}: {path} must be a .yaml, .yml, .json or .toml file")
        sources.append(("secrets", str(path), _read_file(path, "secrets file")))
    sources.append(("env", ENV_PREFIX + "*", _environment_layer(environ, store)))
    sources.append(("-E", "command line", _overrides_layer(overrides)))

    store.update(_wrap_lists(defaults), loader_identifier=SourceMetadata("yaml", str(DEFAULTS_FILE)))
    user_layers: list[dict[str, Any]] = []
    roots: dict[str, str] = {}  # modules root name -> the layer that used it
    for loader, identifier, raw_layer in sources:
        layer, root = _normalise_layer(raw_layer, defaults, identifier)
        if root:
            roots.setdefault(root, identifier)
        user_layers.append(layer)
        if layer:
            store.update(_wrap_lists(layer), loader_identifier=SourceMetadata(loader, identifier))
    if len(roots) > 1:
        raise ConfigError("hostaudit.modules and auditbeat.modules are both set "
                          f"({roots['hostaudit.modules']} and {roots['auditbeat.modules']}): keep one")

    ours = {key.upper() for layer in (defaults, *user_layers) for key in layer}  # not dynaconf's own switches
    merged = {key.lower(): value for key, value in _unwrap_lists(store.as_dict()).items() if key.upper() in ours}
    tree = _protect_secrets(merged)

    datasets = _dataset_settings(tree, next(iter(roots), "hostaudit.modules"), bool(roots))
    path_data = _path_data(tree)
    hostfs = _hostfs(tree)
    output = _output_settings(tree, defaults, user_layers, path_data)
    supervisor = _supervisor_settings(tree)
    queue = _map("queue", tree.get("queue"))
    queue_disk = _map("queue.disk", queue.get("disk"))
    http = _map("http", tree.get("http"))
    logging_section = _map("logging", tree.get("logging"))
    debug = _map("debug", tree.get("debug"))
    _unknown_keys("debug", debug, ("hang_file",))
    _log_unknown(tree, defaults)
    settings = Settings(
        datasets=_freeze(datasets),
        path_data=path_data,
        hostfs=hostfs,
        output=output,
        supervisor=supervisor,
        queue_disk_max_size=_size("queue.disk.max_size", queue_disk.get("max_size")),
        http_enabled=_bool("http.enabled", http.get("enabled")),
        http_host=_str("http.host", http.get("host"), allow_empty=False),
        http_port=_int("http.port", http.get("port"), 0, 65535),
        logging_level=_choice("logging.level", logging_section.get("level"), LOG_LEVELS),
        debug_hang_file=_optional_str("debug.hang_file", debug.get("hang_file")) or "",
        tree=_freeze(tree),
    )
    # Before logging is configured these go to stderr as they are (logging's last-resort handler): `hostaudit
    # test config` shows each as one line starting "warning:", and still says "Config OK".
    for warning in kafka_routing_warnings(settings):
        log.warning("warning: %s", warning)
    return settings


def export_yaml(settings: Settings) -> str:
    """The effective configuration as YAML, every secret shown as `[redacted]`."""
    return yaml.safe_dump(_plain(settings.tree), sort_keys=False, default_flow_style=False, allow_unicode=True)
