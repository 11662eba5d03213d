"""Loading the configuration: the layers merged by dynaconf (layers.py), checked against the declared schema
(schema.py and each dataset's options schema from the catalog), then the rules that span sections (which
output is enabled, Kafka credentials, periods per dataset). The result is the read-only `Settings`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from actors.config.layers import Layers
from actors.config.schema import (OUTPUTS, DatasetCatalog, Framework, KafkaOutput, ModuleDefaults, ModuleEntry, ModuleSwitch,
                                  Logging, OutputSwitch, StatePeriod)
from actors.config.secrets import freeze, plain, protect_secrets
from actors.event import deep_merge
from actors.options import ConfigError, fail, show, unknown_key, validate

log = logging.getLogger("hostaudit.config")

DEFAULTS_FILE = Path(__file__).resolve().parent.parent.parent / "settings" / "settings.yaml"
AUTOMATIC_HANG_TIMEOUT_FLOOR = 30.0  # seconds; supervisor.hang_timeout: null = max(3 x period, this)
# Standard Beats module options that hostaudit does not implement: accepted with a warning.
BEATS_MODULE_OPTIONS = frozenset({"fields", "fields_under_root", "tags", "processors", "index", "keep_null",
                                  "service", "report_changes"})
# Beats Kafka options that do not apply to hostaudit (it retries until the broker has the event, and the client
# negotiates the rest): accepted with a note. Other Beats options there (topics, codec, kerberos...) are errors.
KAFKA_IGNORED = frozenset({"version", "max_retries", "channel_buffer_size", "metadata", "worker"})
ENTRY_KEYS = ("module", "datasets", "period", "state", "enabled")


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


# --- datasets -------------------------------------------------------------------------------------------------


def _dataset_block(catalog: DatasetCatalog, name: str, raw: Any, where: str) -> tuple[dict[str, Any], float | None]:
    """A `<dataset>:` block (options and `state.period`), checked against the dataset's schema: its options
    (raw, for the dataset to read) and its state period (None when it does not say)."""
    if raw is None:
        return {}, None
    if not isinstance(raw, Mapping):
        fail(where, f"must be a map of settings, not {show(where, raw)}")
    options = {key: value for key, value in raw.items() if key != "state"}
    state = validate(StatePeriod, raw.get("state"), f"{where}.state")
    if name in catalog.built:
        validate(catalog.options_schema(name), options, where)  # refused here, not in a crashing child
    return options, state.period


def _only_built(entries: Any, catalog: DatasetCatalog) -> list[Any]:
    """The defaults' module list, keeping only the datasets hostaudit has built."""
    kept = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("datasets"), list):
            datasets = [name for name in entry["datasets"] if name in catalog.built]
            if datasets:
                kept.append({**entry, "datasets": datasets})
    return kept


def _dataset_settings(tree: dict[str, Any], layers: Layers, catalog: DatasetCatalog) -> dict[str, DatasetSettings]:
    root = layers.modules_root
    hostaudit = tree["hostaudit"]
    defaults = validate(ModuleDefaults, hostaudit.get("module_defaults"), "hostaudit.module_defaults")
    default_blocks: dict[str, tuple[dict[str, Any], float | None]] = {}
    for name, block in (defaults.model_extra or {}).items():
        if name not in catalog.known:
            raise ConfigError(unknown_key(f"hostaudit.module_defaults.{name}", name,
                                          ["period", "state", *catalog.known]))
        default_blocks[name] = _dataset_block(catalog, name, block, f"hostaudit.module_defaults.{name}")
    entries = hostaudit.get("modules")
    if not layers.user_modules:
        entries = hostaudit["modules"] = _only_built(entries, catalog)
    if not isinstance(entries, list):
        fail(root, "must be a list of modules, e.g. [{module: system, datasets: [host]}]")
    datasets: dict[str, DatasetSettings] = {}
    listed_in: dict[str, str] = {}
    not_built: set[str] = set()
    for index, raw_entry in enumerate(entries):
        where = f"{root}[{index}]"
        if not isinstance(raw_entry, Mapping):
            fail(where, f"must be a map of settings, not {show(where, raw_entry)}")
        if not validate(ModuleSwitch, {"enabled": raw_entry.get("enabled", True)}, where).enabled:
            log.debug("%s: enabled: false, skipped", where)
            continue
        entry = validate(ModuleEntry, {key: value for key, value in raw_entry.items() if key in ENTRY_KEYS}, where)
        if entry.module is None:
            fail(f"{where}.module", "required (module: system)")
        if entry.module != "system":
            fail(f"{where}.module", f"unknown module {entry.module!r}: hostaudit implements the Auditbeat "
                                    "module 'system' only")
        if entry.datasets is None:
            fail(f"{where}.datasets", "required: a list of datasets, e.g. [host]")
        if not entry.datasets:
            fail(f"{where}.datasets", "lists no dataset")
        for name in entry.datasets:
            if name not in catalog.known:
                fail(f"{where}.datasets", f"unknown dataset {name!r} (known: {', '.join(catalog.known)})")
            if name in listed_in:
                fail(f"{where}.datasets", f"dataset {name!r} is listed twice (also in {listed_in[name]})")
            listed_in[name] = where
        for key in raw_entry:
            if key in BEATS_MODULE_OPTIONS:
                log.warning("%s.%s: not supported by hostaudit, ignored", where, key)
            elif key in catalog.known and key not in entry.datasets:
                _dataset_block(catalog, key, raw_entry[key], f"{where}.{key}")  # still checked: a wrong value is
                log.debug("%s.%s: options of a dataset this module does not run, ignored", where, key)  # a mistake
            elif key not in ENTRY_KEYS and key not in catalog.known:
                raise ConfigError(unknown_key(f"{where}.{key}", key, [*ENTRY_KEYS, *entry.datasets]))
        period = entry.period if entry.period is not None else defaults.period
        for name in entry.datasets:
            default_options, default_state = default_blocks.get(name, ({}, None))
            own_options, own_state = _dataset_block(catalog, name, raw_entry.get(name), f"{where}.{name}")
            options = deep_merge(deep_merge({}, default_options), own_options)  # the entry's options win
            state_period = next(value for value in (own_state, entry.state.period, default_state,
                                                    defaults.state.period) if value is not None)
            if name not in catalog.built:
                not_built.add(name)
                continue
            datasets[name] = DatasetSettings(name, period, state_period, freeze(options))
    if not_built:
        raise ConfigError(f"{root}: datasets not built yet: {', '.join(sorted(not_built))} "
                          f"(built: {', '.join(catalog.built)})")
    if not datasets:
        fail(root, "no dataset is enabled")
    return datasets


# --- paths ------------------------------------------------------------------------------------------------------


def _effective_uid() -> int:
    """The effective uid (a function so tests can pretend to be root)."""
    return os.geteuid()


def _default_path_data() -> Path:
    if _effective_uid() == 0:
        return Path("/var/lib/hostaudit")
    return Path("~/.local/share/hostaudit").expanduser()


def _absolute(path: str) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


# --- outputs ------------------------------------------------------------------------------------------------------


def _enabled_output(tree: dict[str, Any], layers: Layers) -> str:
    """The one enabled output (Beats: a section the user configured is enabled unless `enabled: false`)."""
    outputs = tree["output"]
    found = []
    for name, section in outputs.items():
        explicit = section.get("enabled") if isinstance(section, Mapping) else None
        if explicit is None:
            enabled = layers.configured(("output", name))
        else:
            enabled = validate(OutputSwitch, {"enabled": explicit}, f"output.{name}").enabled
        if enabled:
            found.append(name)
    found.sort(key=lambda name: OUTPUTS.index(name) if name in OUTPUTS else len(OUTPUTS))
    if len(found) > 1:
        fail("output", f"only one output can be enabled, found: {', '.join(found)}")
    if found and found[0] not in OUTPUTS:
        fail(f"output.{found[0]}", "not supported by hostaudit (use console, file or kafka)")
    if not found:
        if isinstance(outputs.get("console"), Mapping) and outputs["console"].get("enabled") is False:
            fail("output", "no output is enabled (enable one of console, file, kafka)")
        found = ["console"]
    return found[0]


def _kafka_section(section: dict[str, Any], layers: Layers, enabled: bool) -> dict[str, Any]:
    """Drop the Beats Kafka options hostaudit ignores (noted when Kafka is the output) and keep the one
    partitioner chosen: the one a user layer names, else the defaults'."""
    for name in sorted(KAFKA_IGNORED & set(section)):
        if enabled and name == "version" and section[name] is not None:
            log.info("output.kafka.version: ignored, the Kafka client negotiates the protocol version")
        elif enabled and name != "version":
            log.warning("output.kafka.%s: not used by hostaudit, ignored", name)
        del section[name]
    partition = section.get("partition")
    if isinstance(partition, Mapping):
        for name in partition:
            if name not in ("hash", "round_robin", "random"):
                fail(f"output.kafka.partition.{name}", "unknown partitioner (use hash, round_robin or random)")
        chosen = [name for name in partition if layers.configured(("output", "kafka", "partition", name))]
        chosen = chosen or list(partition) or ["hash"]
        if len(chosen) > 1:
            fail("output.kafka.partition", f"choose one partitioner, found: {', '.join(chosen)}")
        section["partition"] = {chosen[0]: partition.get(chosen[0]) or {}}
    return section


def _kafka_options(kafka: KafkaOutput, layers: Layers, enabled: bool) -> dict[str, Any]:
    """The Kafka output's options, with the rules that span its keys."""
    key = "output.kafka"
    if enabled and kafka.required_acks != -1:
        # kafka-python would silently turn idempotence off for acks != all; hostaudit refuses instead.
        fail(f"{key}.required_acks", f"{kafka.required_acks} conflicts with idempotent, at-least-once delivery "
             "(enable_idempotence needs -1, all in-sync replicas)")
    if kafka.compression == "gzip" and not 0 <= kafka.compression_level <= 9:
        fail(f"{key}.compression_level", f"{kafka.compression_level} is out of range for gzip (must be 0 to 9)")
    ssl = kafka.ssl
    ssl_enabled = layers.configured(("output", "kafka", "ssl")) if ssl.enabled is None else ssl.enabled
    if enabled and (ssl.certificate is None) != (ssl.key is None):
        fail(f"{key}.ssl.{'key' if ssl.key is None else 'certificate'}",
             "required with ssl.certificate and ssl.key: give both or neither")
    if enabled and ssl_enabled:
        files = [(f"{key}.ssl.certificate_authorities[{index}]", path)
                 for index, path in enumerate(ssl.certificate_authorities)]
        files += [(f"{key}.ssl.{name}", path) for name, path in (("certificate", ssl.certificate),
                                                                 ("key", ssl.key)) if path is not None]
        for where, path in files:
            if not Path(path).expanduser().is_file():
                fail(where, f"{path} is not an existing file")
    if enabled and kafka.username is not None and kafka.password is None:
        fail(f"{key}.password", "required when output.kafka.username is set")
    if enabled and kafka.password is not None and kafka.username is None:
        fail(f"{key}.username", "required when output.kafka.password is set")
    mechanism = kafka.sasl.mechanism or ("PLAIN" if kafka.username is not None else None)
    if kafka.backoff.max < kafka.backoff.init:
        fail(f"{key}.backoff.max", "must not be less than output.kafka.backoff.init")
    if enabled and not kafka.hosts:
        fail(f"{key}.hosts", 'required when the Kafka output is enabled, e.g. ["localhost:9092"]')
    options = kafka.model_dump(exclude={"enabled"})
    partition_name = next(name for name, value in options["partition"].items() if value is not None)
    partition = {name: value for name, value in options["partition"][partition_name].items()
                 if partition_name == "hash" or name != "hash"}
    partition["hash"] = list(partition["hash"]) if "hash" in partition else None
    if partition["hash"] is None:
        del partition["hash"]
    options.update(
        hosts=list(kafka.hosts), key=kafka.key or "", partition={partition_name: partition},
        headers=[dict(header) for header in options["headers"]],
        ssl={**options["ssl"], "enabled": ssl_enabled, "key_passphrase": ssl.key_passphrase,
             "certificate_authorities": list(ssl.certificate_authorities)},
        sasl={"mechanism": mechanism}, password=kafka.password)
    return options


def _output_settings(framework: Framework, tree: dict[str, Any], name: str, layers: Layers,
                     path_data: Path) -> OutputSettings:
    outputs = framework.output
    file = outputs.file
    options = {
        "console": {"pretty": outputs.console.pretty},
        "file": {"path": str(_absolute(file.path) if file.path else path_data / "output"), "filename": file.filename,
                 "rotate_every_kb": file.rotate_every_kb, "number_of_files": file.number_of_files,
                 "permissions": file.permissions},
        "kafka": _kafka_options(outputs.kafka, layers, name == "kafka"),
    }
    sections = tree["output"]  # the effective values, for export
    for section in OUTPUTS:
        sections[section]["enabled"] = section == name
    sections["file"]["path"] = options["file"]["path"]
    sections["file"]["permissions"] = f"0{file.permissions:o}"
    kafka = options["kafka"]
    sections["kafka"]["partition"] = kafka["partition"]
    sections["kafka"]["ssl"] = {**sections["kafka"].get("ssl", {}), "enabled": kafka["ssl"]["enabled"]}
    sections["kafka"]["sasl"] = {**sections["kafka"].get("sasl", {}), "mechanism": kafka["sasl"]["mechanism"]}
    return OutputSettings(name, freeze(options[name]))


# --- Kafka routing: a format string naming a field some enabled dataset never sets ----------------------------


def format_string_fields(template: str) -> list[str]:
    """The fields a Beats format string (`x-%{[process.name]}`) needs, those without a `:default`, in order."""
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


def kafka_routing_warnings(settings: Settings, catalog: DatasetCatalog) -> list[str]:
    """One line per field that output.kafka.topic or .key needs (no default) and an enabled dataset never
    sets: that dataset's events could not be routed and the Kafka output would refuse them."""
    if settings.output.type != "kafka":
        return []
    warnings = []
    for name in ("topic", "key"):
        template = settings.output.options.get(name) or ""
        if "%{" not in template:
            continue
        for field in format_string_fields(template):
            lacking = [dataset for dataset in settings.datasets if not catalog.sets_field(dataset, field)]
            if lacking:
                warnings.append(
                    f"output.kafka.{name}: %{{[{field}]}} has no default and dataset{'s' if len(lacking) > 1 else ''} "
                    f"{', '.join(lacking)} never set{'' if len(lacking) > 1 else 's'} {field}: the Kafka output "
                    f"will refuse those events (give a default, e.g. %{{[{field}]:none}})")
    return warnings


# --- loading ------------------------------------------------------------------------------------------------------


def load_settings(config_file: str | Path | None = None, overrides: Sequence[str] = (),
                  environ: Mapping[str, str] | None = None, *, catalog: DatasetCatalog) -> Settings:
    """Load defaults, the -c file, the secrets file, HOSTAUDIT_* variables and -E overrides; check them.

    Raises ConfigError (one line naming the setting or file) for anything the user can fix.
    `environ` defaults to os.environ; only variables starting with HOSTAUDIT_ are read.
    """
    layers = Layers(DEFAULTS_FILE, config_file, overrides, os.environ if environ is None else environ)
    tree = protect_secrets(layers.tree)
    for name in Framework.model_fields:
        if name != "hostfs" and tree.get(name) is not None and not isinstance(tree[name], Mapping):
            fail(name, f"must be a map of settings, not {show(name, tree[name])}")
    output_name = _enabled_output(tree, layers)
    checked = {key: value for key, value in tree.items() if key != "output"}
    checked["output"] = {name: section for name, section in tree["output"].items() if name in OUTPUTS}
    checked["output"]["kafka"] = _kafka_section(dict(checked["output"].get("kafka") or {}), layers,
                                                output_name == "kafka")
    framework = validate(Framework, checked)
    _log_unknown(tree)
    datasets = _dataset_settings(tree, layers, catalog)
    path_data = _absolute(framework.path.data) if framework.path.data else _default_path_data()
    tree["path"] = {**tree["path"], "data": str(path_data)}
    hostfs = _absolute(framework.hostfs or "/")
    if not hostfs.is_dir():
        fail("hostfs", f"{hostfs} is not an existing directory")
    tree["hostfs"] = str(hostfs)
    output = _output_settings(framework, tree, output_name, layers, path_data)
    supervisor = framework.supervisor
    if supervisor.backoff.max < supervisor.backoff.initial:
        fail("supervisor.backoff.max", "must not be less than supervisor.backoff.initial")
    settings = Settings(
        datasets=freeze(datasets),
        path_data=path_data,
        hostfs=hostfs,
        output=output,
        supervisor=SupervisorSettings(supervisor.hang_timeout, supervisor.max_restarts,
                                      supervisor.max_restarts_window, supervisor.backoff.initial,
                                      supervisor.backoff.max, supervisor.failed_retry),
        queue_disk_max_size=framework.queue.disk.max_size,
        http_enabled=framework.http.enabled,
        http_host=framework.http.host,
        http_port=framework.http.port,
        logging_level=framework.logging.level,
        debug_hang_file=framework.debug.hang_file or "",
        tree=freeze(tree),
    )
    # Before logging is configured these go to stderr as they are (logging's last-resort handler): `hostaudit
    # test config` shows each as one line starting "warning:", and still says "Config OK".
    for warning in kafka_routing_warnings(settings, catalog):
        log.warning("warning: %s", warning)
    return settings


def _log_unknown(tree: Mapping[str, Any]) -> None:
    """Beats ignores top-level settings it does not know: say so at debug level."""
    for key in tree:
        if key not in Framework.model_fields:
            log.debug("%s: not a hostaudit setting, ignored", key)
    for key in tree.get("logging") or {}:
        if key not in Logging.model_fields:
            log.debug("logging.%s: not a hostaudit setting, ignored", key)


def export_yaml(settings: Settings) -> str:
    """The effective configuration as YAML, every secret shown as `[redacted]`."""
    return yaml.safe_dump(plain(settings.tree), sort_keys=False, default_flow_style=False, allow_unicode=True)
