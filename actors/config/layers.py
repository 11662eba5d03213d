"""Reading the configuration layers: YAML files (with alias limits and file:line errors), the secrets file,
HOSTAUDIT_* variables and -E overrides, each turned into nested maps (dotted keys expanded, Auditbeat's
`auditbeat.modules` moved to `hostaudit.modules`), then merged in order by dynaconf."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from dynaconf.base import UPPER_DEFAULT_SETTINGS
from dynaconf.base import Settings as _DynaconfSettings
from dynaconf.loaders.base import SourceMetadata
from dynaconf.utils.parse_conf import boolean_fix, parse_conf_data

from actors.options import ConfigError, is_secret_key

log = logging.getLogger("hostaudit.config")

ENV_PREFIX = "HOSTAUDIT_"
SECRETS_FILE_VARIABLE = "HOSTAUDIT_SECRETS_FILE"


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


def read_file(path: Path, what: str) -> dict[str, Any]:
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


def environment_layers(environ: Mapping[str, str], store: _DynaconfSettings) -> list[dict[str, Any]]:
    """HOSTAUDIT_A__B=value -> [{a: {b: value}}, ...], one layer per variable in name order, each value parsed
    by dynaconf as a TOML scalar (5066 a number, true a boolean)."""
    layers = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == SECRETS_FILE_VARIABLE:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if not all(path):
            log.debug("ignoring environment variable %s: empty setting name", name)
            continue
        nested: Any = _expand(parse_conf_data(boolean_fix(environ[name]), tomlfy=True, box_settings=store), name)
        for part in reversed(path):
            nested = {part: nested}
        layers.append(nested)
    return layers


def override_layers(overrides: Sequence[str]) -> list[dict[str, Any]]:
    """-E key=value (Beats): one layer per override, the dotted key expanded, the value parsed as YAML."""
    layers = []
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
        layers.append(_expand({key: value}))
    return layers


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


def get(tree: Any, path: Iterable[str]) -> Any:
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


def configured(layers: Sequence[dict[str, Any]], path: Sequence[str]) -> bool:
    return any(_has(layer, path) and _names_non_secret(get(layer, path)) for layer in layers)


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
        "FRESH_VARS_FOR_DYNACONF": [],
    "SKIP_FILES_FOR_DYNACONF": [],
}




def normalise_layer(layer: dict[str, Any], defaults: dict[str, Any], source: str) -> tuple[dict[str, Any], str]:
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


class Layers:
    """The merged configuration tree and what each user layer said (for Beats' "a configured section is
    enabled" rules). dynaconf merges: maps key by key, a later layer's value (a list too) replaces."""

    def __init__(self, defaults_file: Path, config_file: str | Path | None, overrides: Sequence[str],
                 environ: Mapping[str, str]) -> None:
        if not defaults_file.is_file():
            raise ConfigError(f"{defaults_file}: the defaults file is missing (a broken install?)")
        self.defaults = read_file(defaults_file, "defaults file")
        store = _Store(**_DYNACONF_OPTIONS)
        sources: list[tuple[str, str, dict[str, Any]]] = []
        if config_file is not None:
            path = Path(config_file).expanduser()
            sources.append(("yaml", str(path), read_file(path, "config file")))
        secrets_file = environ.get(SECRETS_FILE_VARIABLE, "")
        if secrets_file:
            path = Path(secrets_file).expanduser()
            if path.suffix.lower() not in (".yaml", ".yml", ".json", ".toml"):
                raise ConfigError(f"{SECRETS_FILE_VARIABLE}: {path} must be a .yaml, .yml, .json or .toml file")
            sources.append(("secrets", str(path), read_file(path, "secrets file")))
        sources += [("env", ENV_PREFIX + "*", layer) for layer in environment_layers(environ, store)]
        sources += [("-E", "command line", layer) for layer in override_layers(overrides)]

        store.update(_wrap_lists(self.defaults), loader_identifier=SourceMetadata("yaml", str(defaults_file)))
        self.user_layers: list[dict[str, Any]] = []
        roots: dict[str, str] = {}  # modules root name -> the first layer that used it
        for loader, identifier, raw_layer in sources:
            layer, root = normalise_layer(raw_layer, self.defaults, identifier)
            if root:
                roots.setdefault(root, identifier)
            self.user_layers.append(layer)
            if layer:
                store.update(_wrap_lists(layer), loader_identifier=SourceMetadata(loader, identifier))
        if len(roots) > 1:
            raise ConfigError("hostaudit.modules and auditbeat.modules are both set "
                              f"({roots['hostaudit.modules']} and {roots['auditbeat.modules']}): keep one")
        self.modules_root = next(iter(roots), "hostaudit.modules")  # how the user named the module list
        self.user_modules = bool(roots)  # False: the defaults' list
        ours = {key.upper() for layer in (self.defaults, *self.user_layers) for key in layer}
        self.tree = {key.lower(): value for key, value in _unwrap_lists(store.as_dict()).items()
                     if key.upper() in ours}  # not dynaconf's own switches

    def configured(self, path: Sequence[str]) -> bool:
        """True when a user layer names `path` with anything but secrets (Beats: such a section is enabled)."""
        return configured(self.user_layers, path)
