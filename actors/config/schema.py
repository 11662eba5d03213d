"""The declared schema of every framework setting (pydantic models). Defaults are in settings/settings.yaml,
which dynaconf loads first: a key the file lacks is reported as required. Each dataset's own options are
declared in its folder (`actors/datasets/<name>/options.py`) and handed in by the dataset catalog."""

from __future__ import annotations

import re
from typing import Annotated, Any, Mapping, Protocol

from actors.options import (Boolean, Choice, ConfigError, Duration, NonEmptyText, OptionalBoolean, OptionalText,
                            Period, Schema, Size, Text, TextList, Whole, checked)

OUTPUTS = ("console", "file", "kafka")
LOG_LEVELS = ("debug", "info", "warning", "error")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
VERIFICATION_MODES = ("full", "strict", "certificate", "none")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class DatasetCatalog(Protocol):
    """What the configuration needs to know of the datasets, handed in by the caller (the CLI passes
    `actors.datasets.CATALOG`): the configuration itself never imports a dataset."""

    built: tuple[str, ...]  # the datasets hostaudit has, in their default order
    known: tuple[str, ...]  # built ones, then those of the Auditbeat System module not built yet

    def options_schema(self, name: str) -> type[Schema]:
        """The pydantic model of `<name>.*` (a built dataset)."""

    def sets_field(self, name: str, field: str) -> bool:
        """True when some event of dataset `name` can carry `field`."""


# --- values ---------------------------------------------------------------------------------------------------


def _file_mode(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*0?[0-7]{1,3}\s*", value):
        value = int(value, 8)  # YAML 0600 is already the number 0o600; a string is octal
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(f"{value!r} is not a file mode such as 0600")
    return value


def _file_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{value!r} is not a file name")
    if "/" in value or value in (".", ".."):
        raise ConfigError(f"{value!r} must be a file name, not a path")
    return value


def _host_port(value: Any) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{value!r} is not host:port (e.g. localhost:9092)")
    return text


def _compression(value: Any) -> str:
    value = "none" if value is False or value in ("no", "off") else value
    if isinstance(value, str) and value.strip().lower() in COMPRESSIONS:
        return value.strip().lower()
    raise ConfigError(f"{value!r} is not one of {', '.join(COMPRESSIONS)}")


def _secret(value: Any) -> Any:
    if value is None or value == "":
        return None
    if type(value).__name__ != "Secret":  # the loader wraps every secret-named value before validation
        raise ConfigError("must be a string")
    return value


FileMode = Annotated[int, checked(_file_mode)]
FileName = Annotated[str, checked(_file_name)]
HostPort = Annotated[str, checked(_host_port)]
SecretValue = Annotated[Any, checked(_secret)]


# --- sections ---------------------------------------------------------------------------------------------------


class StatePeriod(Schema):
    """`state.period` of a module entry or a dataset block: None when it does not say."""

    period: Period | None = None


class DefaultStatePeriod(Schema):
    period: Period


class ModuleDefaults(Schema):
    """`hostaudit.module_defaults`: period and state.period of every module entry that does not say, and
    per-dataset blocks (`<dataset>: {state.period, options...}`), checked against the dataset's schema."""

    model_config = {**Schema.model_config, "extra": "allow"}
    period: Period
    state: DefaultStatePeriod


class ModuleSwitch(Schema):
    """`enabled` of a module entry, read first: a disabled entry is not checked further."""

    enabled: Boolean = True


class ModuleEntry(Schema):
    """One entry of `hostaudit.modules` (Auditbeat's `auditbeat.modules`). Dataset blocks (`process.*`) are
    the extra keys, checked against each dataset's schema."""

    model_config = {**Schema.model_config, "extra": "allow"}
    module: Text | None = None
    datasets: TextList | None = None
    period: Period | None = None
    state: StatePeriod = StatePeriod()
    enabled: Boolean = True


class OutputSwitch(Schema):
    """`output.<name>.enabled` alone, read before the sections (null: enabled when the user configured it)."""

    enabled: OptionalBoolean


class ConsoleOutput(Schema):
    enabled: OptionalBoolean
    pretty: Boolean


class FileOutput(Schema):
    enabled: OptionalBoolean
    path: OptionalText
    filename: FileName
    rotate_every_kb: Whole(1)
    number_of_files: Whole(2, 1024)
    permissions: FileMode


class HashPartitioner(Schema):
    hash: TextList = ()
    random: Boolean = True
    reachable_only: Boolean = False


class GroupPartitioner(Schema):
    group_events: Whole(1) = 1
    reachable_only: Boolean = False


class Partition(Schema):
    """Exactly one partitioner (the loader keeps the one the user chose, else the default's)."""

    hash: HashPartitioner | None = None
    round_robin: GroupPartitioner | None = None
    random: GroupPartitioner | None = None


class Header(Schema):
    key: NonEmptyText = None  # type: ignore[assignment]  # checked: a missing key is "None is not a string"
    value: Text = ""


class KafkaSsl(Schema):
    enabled: OptionalBoolean
    certificate_authorities: TextList
    certificate: OptionalText
    key: OptionalText
    key_passphrase: SecretValue
    verification_mode: Choice(*VERIFICATION_MODES)


def _mechanism(value: Any) -> str | None:
    if value is None or value == "":
        return None  # PLAIN when a username is set (decided by the loader)
    if isinstance(value, str) and value.strip().upper() in SASL_MECHANISMS:
        return value.strip().upper()
    raise ConfigError(f"{value!r} is not one of {', '.join(SASL_MECHANISMS)}")


class KafkaSasl(Schema):
    mechanism: Annotated[str | None, checked(_mechanism)]


class Backoff(Schema):
    init: Duration()
    max: Duration()


class KafkaOutput(Schema):
    enabled: OptionalBoolean
    hosts: Annotated[tuple[HostPort, ...], checked(lambda value: [] if value is None else
                                                   [value] if isinstance(value, str) else value)]
    topic: NonEmptyText
    key: OptionalText
    partition: Partition
    required_acks: Whole(-1, 1)
    compression: Annotated[str, checked(_compression)]
    compression_level: Whole()
    max_message_bytes: Whole(1)
    bulk_max_size: Whole(1)
    bulk_flush_frequency: Duration(allow_zero=True)
    client_id: NonEmptyText
    timeout: Duration()
    broker_timeout: Duration()
    keep_alive: Duration(allow_zero=True)
    headers: Annotated[tuple[Header, ...], checked(lambda value: [] if value is None else value)]
    ssl: KafkaSsl
    sasl: KafkaSasl
    username: OptionalText
    password: SecretValue
    backoff: Backoff


class Outputs(Schema):
    """`output.*`; sections of outputs hostaudit lacks are handled (refused or ignored) before this."""

    console: ConsoleOutput
    file: FileOutput
    kafka: KafkaOutput


class SupervisorBackoff(Schema):
    initial: Duration()
    max: Duration()


class Supervisor(Schema):
    hang_timeout: Duration(optional=True)
    max_restarts: Whole(0)
    max_restarts_window: Duration()
    failed_retry: Duration()
    backoff: SupervisorBackoff


class DiskQueue(Schema):
    max_size: Size


class Queue(Schema):
    disk: DiskQueue


class Http(Schema):
    enabled: Boolean
    host: NonEmptyText
    port: Whole(0, 65535)


class Logging(Schema):
    """Beats has many more `logging.*` keys (to_files, metrics...): accepted and ignored, as unknown top-level keys."""

    model_config = {**Schema.model_config, "extra": "ignore"}
    level: Choice(*LOG_LEVELS)


class Debug(Schema):
    hang_file: OptionalText


class PathSection(Schema):
    data: OptionalText


class HostauditSection(Schema):
    modules: Any  # a list of ModuleEntry, checked entry by entry (dataset blocks depend on the catalog)
    module_defaults: ModuleDefaults


class Framework(Schema):
    """Every top-level section hostaudit owns. Other top-level keys (Auditbeat's `processors`, `setup`...)
    are accepted and ignored, as Beats does."""

    model_config = {**Schema.model_config, "extra": "ignore"}
    hostaudit: HostauditSection
    path: PathSection
    hostfs: OptionalText
    output: Outputs
    supervisor: Supervisor
    queue: Queue
    http: Http
    logging: Logging
    debug: Debug


def section_names(model: type[Schema]) -> Mapping[str, Any]:
    """The keys a section declares (for messages)."""
    return model.model_fields
