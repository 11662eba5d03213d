"""Configuration loading and validation: layers, Beats shapes, defaults, every invalid case, secrets."""

from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import yaml

from actors import config
from actors.config import Secret, Settings, export_yaml, load_settings
from actors.options import ConfigError, parse_duration, parse_size
from actors.datasets import BUILT_DATASETS, CATALOG, PLANNED_DATASETS

REPO = Path(__file__).resolve().parent.parent.parent
ANNOUNCEMENT_MODULES = """\
- module: system
  datasets: [host, user]
  period: 1m
  user.detect_password_changes: true
- module: system
  datasets: [process, socket]
  period: 1s
"""
PASSWORD = "s3cr3t-Pa55w0rd"


def load(tmp_path: Path, text: str | None = None, overrides: Sequence[str] = (),
         environ: Mapping[str, str] | None = None, name: str = "hostaudit.yml") -> Settings:
    """Load with `text` as the -c file (if given) and an environment of only `environ`."""
    path = None
    if text is not None:
        path = tmp_path / name
        path.write_text(text)
    return load_settings(path, overrides, environ={} if environ is None else environ, catalog=CATALOG)


def error(tmp_path: Path, text: str | None = None, overrides: Sequence[str] = (),
          environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, overrides, environ)
    message = str(raised.value)
    assert "\n" not in message
    return message


def modules(*datasets: str, extra: str = "") -> str:
    return f"hostaudit.modules:\n- module: system\n  datasets: [{', '.join(datasets)}]\n{extra}"


def kafka_file(tmp_path: Path, extra: str = "") -> str:
    return f"output.kafka:\n  hosts: ['localhost:9092']\n{extra}"


# --- defaults -----------------------------------------------------------------------------------------------


def test_defaults_run_every_built_dataset_every_10s_to_the_console(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert list(settings.datasets) == list(BUILT_DATASETS)
    host = settings.datasets["host"]
    assert (host.period, host.state_period, dict(host.options)) == (10.0, 3600.0, {})
    assert settings.output.type == "console" and dict(settings.output.options) == {"pretty": False}
    assert settings.hostfs == Path("/")
    assert settings.supervisor == config.SupervisorSettings(None, 5, 60.0, 1.0, 60.0)
    assert settings.queue_disk_max_size == 1024**3
    assert (settings.http_enabled, settings.http_host, settings.http_port) == (False, "127.0.0.1", 5066)
    assert settings.logging_level == "info"
    assert settings.debug_hang_file == ""


def test_default_module_list_is_filtered_to_the_built_datasets(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    listed = yaml.safe_load(config.DEFAULTS_FILE.read_text())["hostaudit"]["modules"]
    assert {name for entry in listed for name in entry["datasets"]} >= set(PLANNED_DATASETS) | set(BUILT_DATASETS)
    fewer = type("FewerDatasets", (type(CATALOG),), {"built": ("host", "user")})()
    settings = load_settings(None, environ={}, catalog=fewer)
    assert list(settings.datasets) == ["host", "user"]


def test_dataset_option_defaults_live_only_in_their_options_schema() -> None:
    defaults = yaml.safe_load(config.DEFAULTS_FILE.read_text())["hostaudit"]["module_defaults"]
    for name in CATALOG.built:
        assert set(defaults.get(name) or {}) <= {"state"}, f"{name}'s defaults belong in its options.py"
        schema = CATALOG.options_schema(name)
        assert all(not field.is_required() for field in schema.model_fields.values()), name
        assert schema.model_validate({}) == type(schema.model_validate({}))(), name


def test_the_framework_schema_declares_no_default_settings_yaml_has_them_all() -> None:
    from actors.config.schema import Framework

    # A partitioner's options: only the chosen partitioner's section exists, so its defaults are the schema's
    # (settings.yaml says `partition.hash: {}`).
    alternatives = {"Partition"}

    def required(model: type) -> None:
        if model.__name__ in alternatives:
            return
        for name, field in model.model_fields.items():
            inner = getattr(field.annotation, "model_fields", None)
            assert field.is_required(), f"{model.__name__}.{name} has a default: it belongs in settings.yaml"
            if inner is not None:
                required(field.annotation)

    required(Framework)


def test_every_default_in_settings_yaml_is_documented_by_a_comment() -> None:
    lines = config.DEFAULTS_FILE.read_text().splitlines()
    top_level = [index for index, line in enumerate(lines) if line and not line.startswith((" ", "#", "-"))]
    for index in top_level:
        assert lines[index - 1].startswith("#") or lines[index + 1].lstrip().startswith("#"), lines[index]


def test_a_user_file_only_changes_what_it_names(tmp_path: Path) -> None:
    settings = load(tmp_path, "logging.level: debug\n")
    assert settings.logging_level == "debug"
    assert settings.tree["http"]["port"] == 5066 and settings.output.type == "console"


# --- durations and sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("500ms", 0.5), ("1s", 1.0), ("1m", 60.0), ("12h", 43200.0), ("1h30m", 5400.0), (90, 90.0), ("90", 90.0),
    ("1.5s", 1.5), (2.5, 2.5), (" 10s ", 10.0), ("100us", 1e-4), ("1h0m0.5s", 3600.5), ("+2m", 120.0),
])
def test_parse_duration_accepts_go_durations_and_bare_seconds(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["1x", "", "s", "abc", "1 s", "1e3", "nan", "inf", "1s2", True, None, [],
                                   float("inf"), "0", "0s", 0, "-1s", -5, "-1h30m"])
def test_parse_duration_rejects_garbage_zero_and_negative(value: Any) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value, size", [
    ("1GiB", 1024**3), ("100 MiB", 100 * 1024**2), ("50MB", 50_000_000), (1024, 1024), ("1024", 1024),
    ("1kb", 1000), ("1kib", 1024), ("1KiB", 1024), ("1.5 KiB", 1536), ("10 b", 10), ("1,024", 1024),
    ("2k", 2000), ("1ki", 1024), ("1 TB", 10**12), ("0", 0),
])
def test_parse_size_reads_go_humanize_sizes(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["abc", "-1", "1 XB", "", True, -1, None, "1.2.3", "GiB", "1 GiB extra"])
def test_parse_size_rejects_garbage(value: Any) -> None:
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size(value)


# --- dotted keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted, nested", [
    ("path.data: /tmp/d\n", "path:\n  data: /tmp/d\n"),
    ("output.file.path: /tmp/o\n", "output:\n  file:\n    path: /tmp/o\n"),
    ("output:\n  file.path: /tmp/o\n", "output:\n  file:\n    path: /tmp/o\n"),
    ("supervisor.backoff.initial: 2s\n", "supervisor:\n  backoff:\n    initial: 2s\n"),
    (modules("process", extra="  state.period: 5m\n  process.hash.enabled: false\n"),
     modules("process", extra="  state:\n    period: 5m\n  process:\n    hash:\n      enabled: false\n")),
    (modules("host", extra="  host.state.period: 2h\n"),
     modules("host", extra="  host:\n    state:\n      period: 2h\n")),
])
def test_dotted_keys_mean_the_same_as_nested_maps(tmp_path: Path, dotted: str, nested: str) -> None:
    first, second = load(tmp_path, dotted), load(tmp_path, nested)
    assert first.tree == second.tree
    assert first.datasets == second.datasets
    assert first.output == second.output


def test_dataset_options_are_nested_without_the_dataset_prefix(tmp_path: Path) -> None:
    settings = load(tmp_path, modules("process", extra="  process.hash.max_file_size: 100 MiB\n  process.backend: auto\n"))
    options = settings.datasets["process"].options
    assert options["hash"]["max_file_size"] == "100 MiB" and options["backend"] == "auto"


def test_a_value_and_a_map_for_the_same_key_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "path: /x\npath.data: /y\n") == "path: given both as a value and as a map of settings"


# --- modules ------------------------------------------------------------------------------------------------


def test_auditbeat_modules_is_the_same_as_hostaudit_modules(tmp_path: Path) -> None:
    text = "- module: system\n  datasets: [host]\n  period: 5s\n"
    first = load(tmp_path, "hostaudit.modules:\n" + text)
    second = load(tmp_path, "auditbeat.modules:\n" + text)
    assert first.datasets == second.datasets and first.tree == second.tree
    assert first.datasets["host"].period == 5.0


def test_modules_under_both_roots_is_an_error(tmp_path: Path) -> None:
    text = ("hostaudit.modules:\n- {module: system, datasets: [host]}\n"
            "auditbeat.modules:\n- {module: system, datasets: [host]}\n")
    assert "hostaudit.modules and auditbeat.modules are both set" in error(tmp_path, text)


def test_modules_under_both_roots_in_different_layers_is_an_error(tmp_path: Path) -> None:
    text = "auditbeat.modules:\n- {module: system, datasets: [host]}\n"
    message = error(tmp_path, text, ["hostaudit.modules=[{module: system, datasets: [host]}]"])
    assert "hostaudit.modules and auditbeat.modules are both set" in message


def test_the_announcement_example_fails_today_naming_every_unbuilt_dataset(tmp_path: Path) -> None:
    unbuilt = sorted({"host", "user", "process", "socket"} - set(BUILT_DATASETS))
    for root in ("hostaudit.modules", "auditbeat.modules"):
        text = f"{root}:\n{ANNOUNCEMENT_MODULES}"
        if not unbuilt:
            load(tmp_path, text)
            continue
        expected = f"{root}: datasets not built yet: {', '.join(unbuilt)} (built: {', '.join(BUILT_DATASETS)})"
        assert error(tmp_path, text) == expected
        if set(BUILT_DATASETS) == {"host"}:  # today
            assert error(tmp_path, text) == (f"{root}: datasets not built yet: process, socket, user "
                                             "(built: host)")


def test_the_announcement_example_configures_host_right_once_unbuilt_datasets_are_removed(tmp_path: Path) -> None:
    entries = yaml.safe_load(ANNOUNCEMENT_MODULES)
    for entry in entries:
        entry["datasets"] = [name for name in entry["datasets"] if name in BUILT_DATASETS]
    entries = [entry for entry in entries if entry["datasets"]]
    settings = load(tmp_path, yaml.safe_dump({"auditbeat.modules": entries}))
    host = settings.datasets["host"]
    assert (host.period, host.state_period, dict(host.options)) == (60.0, 3600.0, {})
    if "user" in BUILT_DATASETS:
        assert settings.datasets["user"].options == {"detect_password_changes": True}  # defaults: options.py


def test_the_shipped_example_file_is_the_announcement_example(tmp_path: Path) -> None:
    example = REPO / "settings" / "auditbeat-example.yml"
    assert yaml.safe_load(example.read_text()) == {"hostaudit.modules": yaml.safe_load(ANNOUNCEMENT_MODULES)}
    if set(BUILT_DATASETS) == {"host"}:
        with pytest.raises(ConfigError, match=r"^hostaudit.modules: datasets not built yet: process, socket, user"):
            load_settings(example, environ={}, catalog=CATALOG)


def test_an_unknown_module_is_an_error_naming_it(tmp_path: Path) -> None:
    text = "hostaudit.modules:\n- {module: system, datasets: [host]}\n- {module: auditd, audit_rules: ''}\n"
    message = error(tmp_path, text)
    assert message.startswith("hostaudit.modules[1].module: unknown module 'auditd'")


def test_an_unknown_dataset_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, modules("host", "files"))
    assert message.startswith("hostaudit.modules[0].datasets: unknown dataset 'files'")


def test_a_dataset_listed_twice_is_an_error(tmp_path: Path) -> None:
    text = "hostaudit.modules:\n- {module: system, datasets: [host]}\n- {module: system, datasets: [host]}\n"
    assert error(tmp_path, text) == ("hostaudit.modules[1].datasets: dataset 'host' is listed twice "
                                     "(also in hostaudit.modules[0])")
    assert "listed twice" in error(tmp_path, modules("host", "host"))


@pytest.mark.parametrize("line, key, problem", [
    ("period: 1x", "period", "'1x' is not a duration (use e.g. 500ms, 1s, 1m, 12h)"),
    ("period: 0", "period", "0 must be greater than 0"),
    ("period: 0s", "period", "'0s' must be greater than 0"),
    ("period: -5s", "period", "'-5s' must be greater than 0"),
    ("state.period: soon", "state.period", "'soon' is not a duration"),
    ("state.period: 0s", "state.period", "'0s' must be greater than 0"),
    ("host.state.period: -1h", "host.state.period", "'-1h' must be greater than 0"),
])
def test_a_bad_period_is_an_error_naming_the_key(tmp_path: Path, line: str, key: str, problem: str) -> None:
    text = f"hostaudit.modules:\n- {{module: system, datasets: [host], enabled: false}}\n" \
           f"- module: system\n  datasets: [host]\n  {line}\n"
    assert error(tmp_path, text).startswith(f"hostaudit.modules[1].{key}: {problem}")


def test_state_period_defaults_to_1h_for_host_and_the_entry_or_dataset_setting_wins(tmp_path: Path) -> None:
    assert load(tmp_path, modules("host")).datasets["host"].state_period == 3600.0
    assert load(tmp_path, modules("host", extra="  state.period: 12h\n")).datasets["host"].state_period == 43200.0
    text = modules("host", extra="  state.period: 12h\n  host.state.period: 30m\n")
    assert load(tmp_path, text).datasets["host"].state_period == 1800.0
    assert load(tmp_path, modules("host")).datasets["host"].period == 10.0


def test_a_disabled_module_entry_is_ignored(tmp_path: Path) -> None:
    text = "hostaudit.modules:\n- {module: system, datasets: [host], period: 3s}\n" \
           "- {module: system, datasets: [process], period: nonsense, enabled: false}\n"
    assert load(tmp_path, text).datasets["host"].period == 3.0
    text = "hostaudit.modules:\n- {module: system, datasets: [host], enabled: false}\n"
    assert error(tmp_path, text) == "hostaudit.modules: no dataset is enabled"


def test_module_entry_shape_errors(tmp_path: Path) -> None:
    assert error(tmp_path, "hostaudit.modules: {module: system}\n").startswith("hostaudit.modules: must be a list")
    assert error(tmp_path, "hostaudit.modules: [system]\n").startswith("hostaudit.modules[0]: must be a map")
    assert error(tmp_path, "hostaudit.modules:\n- {datasets: [host]}\n").startswith(
        "hostaudit.modules[0].module: required")
    assert error(tmp_path, "hostaudit.modules:\n- {module: system}\n").startswith(
        "hostaudit.modules[0].datasets: required")
    assert error(tmp_path, "hostaudit.modules:\n- {module: system, datasets: []}\n") == \
        "hostaudit.modules[0].datasets: lists no dataset"
    assert error(tmp_path, modules("host", extra="  enabled: maybe\n")).startswith("hostaudit.modules[0].enabled:")


def test_beats_module_options_hostaudit_lacks_are_warned_about(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    load(tmp_path, modules("host", extra="  tags: [prod]\n"))
    assert "hostaudit.modules[0].tags: not supported by hostaudit, ignored" in caplog.text


def test_a_user_module_list_replaces_the_default_one(tmp_path: Path) -> None:
    settings = load(tmp_path, modules("host", extra="  period: 2s\n"))
    assert len(settings.tree["hostaudit"]["modules"]) == 1
    assert settings.datasets["host"].period == 2.0


# --- layers: file, env, -E ----------------------------------------------------------------------------------


def test_env_beats_the_file_and_e_beats_env(tmp_path: Path) -> None:
    text = "logging.level: warning\n"
    environ = {"HOSTAUDIT_LOGGING__LEVEL": "error"}
    assert load(tmp_path, text).logging_level == "warning"
    assert load(tmp_path, text, environ=environ).logging_level == "error"
    assert load(tmp_path, text, ["logging.level=debug"], environ).logging_level == "debug"


def test_e_overrides_the_runtime_and_tests_use(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    settings = load(tmp_path, "path.data: /elsewhere\nsupervisor.max_restarts: 9\n", [
        f"path.data={data}", "logging.level=debug", "supervisor.max_restarts=2", "output.console.enabled=false",
        "output.file.enabled=true", f"output.file.path={out}", f"hostfs={tmp_path}",
        "hostaudit.modules=[{module: system, datasets: [host], period: 1s}]"])
    assert settings.path_data == data and settings.logging_level == "debug"
    assert settings.supervisor.max_restarts == 2 and settings.hostfs == tmp_path
    assert settings.output.type == "file" and settings.output.options["path"] == str(out)
    assert settings.datasets["host"].period == 1.0


def test_the_last_e_wins(tmp_path: Path) -> None:
    assert load(tmp_path, overrides=["logging.level=debug", "logging.level=error"]).logging_level == "error"


@pytest.mark.parametrize("override, message", [
    ("logging.level", "-E logging.level: expected key=value"),
    ("=debug", "-E: expected key=value"),
    ("output.kafka.topic=[unclosed", "-E output.kafka.topic: the value is not valid YAML"),
])
def test_a_malformed_e_is_an_error(tmp_path: Path, override: str, message: str) -> None:
    assert error(tmp_path, overrides=[override]).startswith(message)


def test_hostaudit_environment_variables_nest_with_double_underscores(tmp_path: Path) -> None:
    environ = {"HOSTAUDIT_OUTPUT__FILE__PATH": str(tmp_path / "x"), "HOSTAUDIT_PATH__DATA": str(tmp_path / "d"),
               "HOSTAUDIT_HTTP__PORT": "8080", "HOSTAUDIT_HTTP__ENABLED": "True",
               "HOSTAUDIT_SUPERVISOR__HANG_TIMEOUT": "45s", "HOSTAUDIT_OUTPUT__FILE__ENABLED": "true"}
    settings = load(tmp_path, environ=environ)
    assert settings.output.type == "file" and settings.output.options["path"] == str(tmp_path / "x")
    assert settings.path_data == tmp_path / "d"
    assert (settings.http_enabled, settings.http_port) == (True, 8080)
    assert settings.supervisor.hang_timeout == 45.0


def test_environment_variables_without_the_prefix_and_dynaconf_switches_are_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.yaml").write_text("logging:\n  level: error\n")
    (tmp_path / "settings.toml").write_text("[logging]\nlevel = 'error'\n")
    (tmp_path / "settings.yaml").write_text("logging:\n  level: error\n")
    (tmp_path / ".secrets.yaml").write_text("logging:\n  level: error\n")
    (tmp_path / ".env").write_text("HOSTAUDIT_LOGGING__LEVEL=error\nDYNACONF_LOGGING__LEVEL=error\n")
    for name, value in {"DYNACONF_LOGGING__LEVEL": "error", "LOGGING__LEVEL": "error",
                        "SETTINGS_FILE_FOR_DYNACONF": str(tmp_path / "evil.yaml"),
                        "SETTINGS_FILES_FOR_DYNACONF": str(tmp_path / "evil.yaml"),
                        "INCLUDES_FOR_DYNACONF": str(tmp_path / "evil.yaml"),
                        "PRELOAD_FOR_DYNACONF": str(tmp_path / "evil.yaml"),
                        "SECRETS_FOR_DYNACONF": str(tmp_path / "evil.yaml"),
                        "LOAD_DOTENV_FOR_DYNACONF": "true", "MERGE_ENABLED_FOR_DYNACONF": "false",
                        "AUTO_CAST_FOR_DYNACONF": "true", "ENVVAR_PREFIX_FOR_DYNACONF": "false",
                        "ENVIRONMENTS_FOR_DYNACONF": "true", "HOSTAUDIT_HTTP__PORT": "6000"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None, (), environ=None, catalog=CATALOG)  # os.environ, as the CLI does
    assert settings.logging_level == "info"
    assert settings.http_port == 6000  # HOSTAUDIT_ variables of os.environ are read
    assert settings.tree["output"]["kafka"]["topic"] == "hostaudit"  # maps still merged, not replaced
    assert "HOSTAUDIT_LOGGING__LEVEL" not in os.environ  # .env not loaded


def test_only_the_defaults_and_the_user_file_are_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("settings.toml", "settings.yaml", "settings.local.yaml", ".secrets.toml", ".env"):
        (tmp_path / name).write_text("")
    marker = tmp_path / "hook-ran"
    (tmp_path / "dynaconf_hooks.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                "def post(settings):\n    return {{}}\n")
    user_file = tmp_path / "hostaudit.yml"
    user_file.write_text("logging.level: debug\n")
    for name in ("SETTINGS_FILE_FOR_DYNACONF", "INCLUDES_FOR_DYNACONF", "PRELOAD_FOR_DYNACONF", "SECRETS_FOR_DYNACONF"):
        monkeypatch.setenv(name, str(tmp_path / "settings.yaml"))
    monkeypatch.setenv("LOAD_DOTENV_FOR_DYNACONF", "true")
    opened: list[str] = []
    recording = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if recording[0] and event == "open" and isinstance(args[0], (str, bytes)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)
    try:
        load_settings(user_file, (), environ={}, catalog=CATALOG)
    finally:
        recording[0] = False
    read = {Path(path).resolve() for path in opened if not path.endswith((".py", ".pyc", ".so"))}
    assert read == {config.DEFAULTS_FILE, user_file.resolve()}, read
    assert not marker.exists()


def test_lists_from_a_later_layer_replace_earlier_ones(tmp_path: Path) -> None:
    text = kafka_file(tmp_path).replace("['localhost:9092']", "['a:1', 'b:2']")
    assert load(tmp_path, text).output.options["hosts"] == ("a:1", "b:2")
    assert load(tmp_path, text, ["output.kafka.hosts=[c:3]"]).output.options["hosts"] == ("c:3",)
    environ = {"HOSTAUDIT_OUTPUT__KAFKA__HOSTS": '["d:4"]'}
    assert load(tmp_path, text, environ=environ).output.options["hosts"] == ("d:4",)


def test_dynaconf_tokens_are_taken_literally(tmp_path: Path) -> None:
    text = kafka_file(tmp_path, "  topic: '@format {env[HOME]}'\n  client_id: '@read_file /etc/hostname'\n"
                                "merge_enabled_for_dynaconf: false\nauto_cast_for_dynaconf: true\n")
    settings = load(tmp_path, text, environ={"HOSTAUDIT_OUTPUT__KAFKA__KEY": "@int 5"})
    assert settings.output.options["topic"] == "@format {env[HOME]}"
    assert settings.output.options["client_id"] == "@read_file /etc/hostname"
    assert settings.output.options["key"] == "@int 5"
    assert settings.output.options["compression"] == "lz4"  # defaults still merged in


def test_unknown_top_level_keys_are_accepted_and_logged_at_debug(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostaudit.config")
    settings = load(tmp_path, "processors:\n- add_host_metadata: ~\nname: web-1\nsetup.template.enabled: false\n"
                              "logging.to_files: true\n")
    assert settings.tree["name"] == "web-1"
    assert "processors: not a hostaudit setting, ignored" in caplog.text
    assert "logging.to_files: not a hostaudit setting, ignored" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("hostaudit.colour: red\n", "hostaudit.colour: unknown setting"),
    ("supervisor.restarts: 3\n", "supervisor.restarts: unknown setting"),
    ("debug.hangfile: /x\n", "debug.hangfile: unknown setting"),
])
def test_unknown_keys_in_sections_hostaudit_owns_are_errors(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text).startswith(message)


def test_an_unknown_key_names_the_nearest_known_one_or_the_few_known_ones(tmp_path: Path) -> None:
    assert error(tmp_path, "supervisor.restarts: 3\n") == \
        "supervisor.restarts: unknown setting (did you mean max_restarts?)"
    assert error(tmp_path, "output.console.colour: red\n") == \
        "output.console.colour: unknown setting (known: enabled, pretty)"


# --- files --------------------------------------------------------------------------------------------------


def test_a_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as raised:
        load_settings(missing, environ={}, catalog=CATALOG)
    assert str(raised.value) == f"{missing}: config file not found"


def test_malformed_yaml_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    text = f"logging.level: info\noutput.kafka:\n  password: {PASSWORD}\n   hosts: [a:1\n"
    message = error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'hostaudit.yml'}: line 4, column ")
    assert "not valid YAML" in message and PASSWORD not in message


def test_a_config_file_that_is_not_a_map_is_an_error(tmp_path: Path) -> None:
    assert "top level of the config file must be a map" in error(tmp_path, "- a\n- b\n")


def test_an_empty_config_file_means_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").tree == load(tmp_path).tree


# --- paths --------------------------------------------------------------------------------------------------


def test_path_data_defaults_to_var_lib_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.load, "_effective_uid", lambda: 0)
    settings = load(tmp_path)
    assert settings.path_data == Path("/var/lib/hostaudit")
    assert settings.output.type == "console"
    assert load(tmp_path, overrides=["output.file.enabled=true"]).output.options["path"] == "/var/lib/hostaudit/output"


def test_path_data_defaults_to_the_users_home_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.load, "_effective_uid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load(tmp_path).path_data == tmp_path / ".local" / "share" / "hostaudit"


def test_a_relative_path_data_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(tmp_path, "path.data: state\n").path_data == tmp_path / "state"


def test_hostfs_must_be_an_existing_directory(tmp_path: Path) -> None:
    assert load(tmp_path, overrides=[f"hostfs={tmp_path}"]).hostfs == tmp_path
    assert error(tmp_path, overrides=[f"hostfs={tmp_path / 'no'}"]) == \
        f"hostfs: {tmp_path / 'no'} is not an existing directory"
    (tmp_path / "file").write_text("")
    assert "is not an existing directory" in error(tmp_path, overrides=[f"hostfs={tmp_path / 'file'}"])


# --- outputs ------------------------------------------------------------------------------------------------


def test_two_enabled_outputs_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, overrides=["output.console.enabled=true", "output.file.enabled=true"]) == \
        "output: only one output can be enabled, found: console, file"
    assert error(tmp_path, "output.file.path: /tmp/x\n" + kafka_file(tmp_path)) == \
        "output: only one output can be enabled, found: file, kafka"


def test_a_configured_output_section_is_enabled_as_in_beats(tmp_path: Path) -> None:
    assert load(tmp_path, f"output.file:\n  path: {tmp_path}\n").output.type == "file"
    assert load(tmp_path, "output.file:\n").output.type == "file"
    assert load(tmp_path, kafka_file(tmp_path)).output.type == "kafka"
    assert load(tmp_path, kafka_file(tmp_path, "  enabled: false\n")).output.type == "console"


def test_disabling_every_output_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, overrides=["output.console.enabled=false"]) == \
        "output: no output is enabled (enable one of console, file, kafka)"


@pytest.mark.parametrize("text, message", [
    ("output.kafka.colour: red\n", "output.kafka.colour: unknown setting"),
    ("output.console.colour: red\n", "output.console.colour: unknown setting"),
    ("output.file.rotate_on_startup: true\n", "output.file.rotate_on_startup: unknown setting"),
    ("output.kafka.ssl.colour: red\n", "output.kafka.ssl.colour: unknown setting"),
    ("output.kafka.codec.json.pretty: true\n", "output.kafka.codec: unknown setting"),
    ("output.kafka.partition.hash.colour: red\n", "output.kafka.partition.hash.colour: unknown setting"),
    ("output.kafka.headers: [{key: a, value: b, colour: c}]\n", "output.kafka.headers[0].colour: unknown setting"),
])
def test_an_unknown_key_under_an_output_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text).startswith(message)


def test_an_output_hostaudit_lacks_is_an_error_unless_disabled(tmp_path: Path) -> None:
    assert error(tmp_path, "output.elasticsearch.hosts: [x]\n").startswith(
        "output.elasticsearch: not supported by hostaudit")
    assert load(tmp_path, "output.elasticsearch: {enabled: false, hosts: [x]}\n").output.type == "console"


def test_file_output_options_with_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, overrides=["output.file.enabled=true", f"path.data={tmp_path}"])
    assert dict(settings.output.options) == {"path": str(tmp_path / "output"), "filename": "hostaudit",
                                             "rotate_every_kb": 10240, "number_of_files": 7, "permissions": 0o600}
    assert load(tmp_path, "output.file.permissions: 0640\n").output.options["permissions"] == 0o640


@pytest.mark.parametrize("line, message", [
    ("number_of_files: 1", "output.file.number_of_files: 1 is out of range"),
    ("rotate_every_kb: 0", "output.file.rotate_every_kb: 0 is out of range"),
    ("filename: a/b", "output.file.filename: 'a/b' must be a file name"),
    ("permissions: 600", "output.file.permissions: 600 is not a file mode"),
    ("pretty: true", "output.file.pretty: unknown setting"),
])
def test_file_output_errors(tmp_path: Path, line: str, message: str) -> None:
    assert error(tmp_path, f"output.file:\n  {line}\n").startswith(message)


def test_kafka_output_options_with_defaults(tmp_path: Path) -> None:
    options = load(tmp_path, kafka_file(tmp_path)).output.options
    assert dict(options) == {
        "hosts": ("localhost:9092",), "topic": "hostaudit", "key": "%{[host.id]}",
        "partition": {"hash": {"hash": (), "random": True, "reachable_only": False}},
        "required_acks": -1, "compression": "lz4", "compression_level": 4, "max_message_bytes": 1000000,
        "bulk_max_size": 2048, "bulk_flush_frequency": 0.0, "client_id": "hostaudit", "timeout": 30.0,
        "broker_timeout": 10.0, "keep_alive": 0.0, "headers": (),
        "ssl": {"enabled": False, "certificate_authorities": (), "certificate": None, "key": None,
                "key_passphrase": None, "verification_mode": "full"},
        "sasl": {"mechanism": None}, "username": None, "password": None, "backoff": {"init": 1.0, "max": 60.0},
    }


def test_kafka_output_options_as_given(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    text = kafka_file(tmp_path, f"""\
  topic: audit
  key: ''
  partition.round_robin.group_events: 5
  compression: 'off'
  headers: [{{key: env, value: prod}}]
  ssl.certificate_authorities: [{ca}]
  username: agent
  password: {PASSWORD}
  sasl.mechanism: scram-sha-512
  backoff: {{init: 2s, max: 1m}}
  timeout: 1m
""")
    options = load(tmp_path, text).output.options
    assert options["topic"] == "audit" and options["key"] == ""
    assert options["partition"] == {"round_robin": {"group_events": 5, "reachable_only": False}}
    assert options["required_acks"] == -1 and options["compression"] == "none"
    assert options["headers"] == ({"key": "env", "value": "prod"},)
    assert options["ssl"]["enabled"] is True and options["ssl"]["certificate_authorities"] == (str(ca),)
    assert options["username"] == "agent" and options["password"].reveal() == PASSWORD
    assert options["sasl"] == {"mechanism": "SCRAM-SHA-512"}
    assert options["backoff"] == {"init": 2.0, "max": 60.0} and options["timeout"] == 60.0


def test_sasl_defaults_to_plain_when_a_username_is_set(tmp_path: Path) -> None:
    text = kafka_file(tmp_path, f"  username: agent\n  password: {PASSWORD}\n")
    assert load(tmp_path, text).output.options["sasl"] == {"mechanism": "PLAIN"}


@pytest.mark.parametrize("extra, message", [
    ("  hosts: []\n", "output.kafka.hosts: required when the Kafka output is enabled"),
    ("  hosts: [localhost]\n", "output.kafka.hosts[0]: 'localhost' is not host:port"),
    ("  required_acks: 2\n", "output.kafka.required_acks: 2 is out of range"),
    ("  compression: brotli\n", "output.kafka.compression: 'brotli' is not one of none, gzip, snappy, lz4, zstd"),
    ("  compression: gzip\n  compression_level: 10\n", "output.kafka.compression_level: 10 is out of range for gzip"),
    ("  partition: {hash: {}, random: {}}\n", "output.kafka.partition: choose one partitioner, found: hash, random"),
    ("  partition.sticky: {}\n", "output.kafka.partition.sticky: unknown partitioner"),
    ("  partition.random.group_events: 0\n", "output.kafka.partition.random.group_events: 0 is out of range"),
    ("  ssl.certificate: /c.pem\n", "output.kafka.ssl.key: required with ssl.certificate and ssl.key"),
    ("  ssl.certificate_authorities: [/nonexistent/ca.pem]\n",
     "output.kafka.ssl.certificate_authorities[0]: /nonexistent/ca.pem is not an existing file"),
    ("  ssl.verification_mode: lax\n", "output.kafka.ssl.verification_mode: 'lax' is not one of"),
    ("  sasl.mechanism: GSSAPI\n  username: a\n  password: b\n", "output.kafka.sasl.mechanism: 'GSSAPI' is not one"),
    ("  username: agent\n", "output.kafka.password: required when output.kafka.username is set"),
    ("  backoff: {init: 10s, max: 1s}\n", "output.kafka.backoff.max: must not be less than"),
    ("  timeout: 0s\n", "output.kafka.timeout: '0s' must be greater than 0"),
    ("  bulk_flush_frequency: -1s\n", "output.kafka.bulk_flush_frequency: '-1s' must be 0 or more"),
    ("  headers: [{value: x}]\n", "output.kafka.headers[0].key: None is not a string"),
    ("  topics: [{topic: x}]\n", "output.kafka.topics: unknown setting"),
])
def test_kafka_output_errors(tmp_path: Path, extra: str, message: str) -> None:
    assert error(tmp_path, kafka_file(tmp_path, extra)).startswith(message)


def test_kafka_notes_what_it_ignores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hostaudit.config")
    options = load(tmp_path, kafka_file(tmp_path, "  version: 2.1.0\n  max_retries: 3\n")).output.options
    assert "version" not in options and "max_retries" not in options
    assert "output.kafka.version: ignored" in caplog.text
    assert "output.kafka.max_retries: not used by hostaudit, ignored" in caplog.text


@pytest.mark.parametrize("acks", ["0", "1"])
def test_acks_that_would_turn_idempotence_off_are_a_config_error(tmp_path: Path, acks: str) -> None:
    assert error(tmp_path, kafka_file(tmp_path, f"  required_acks: {acks}\n")).startswith(
        f"output.kafka.required_acks: {acks} conflicts with idempotent, at-least-once delivery")


# --- other settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("http.port=abc", "http.port: 'abc' is not a whole number"),
    ("http.port=70000", "http.port: 70000 is out of range"),
    ("http.enabled=maybe", "http.enabled: 'maybe' is not true or false"),
    ("http.host=''", "http.host: must not be empty"),
    ("supervisor.max_restarts=-1", "supervisor.max_restarts: -1 is out of range"),
    ("supervisor.hang_timeout=0s", "supervisor.hang_timeout: '0s' must be greater than 0"),
    ("supervisor.max_restarts_window=soon", "supervisor.max_restarts_window: 'soon' is not a duration"),
    ("supervisor.backoff.initial=2m", "supervisor.backoff.max: must not be less than"),
    ("logging.level=loud", "logging.level: 'loud' is not one of debug, info, warning, error"),
    ("queue.disk.max_size=lots", "queue.disk.max_size: 'lots' is not a size"),
    ("queue.disk.max_size=0", "queue.disk.max_size: 0 must be greater than 0"),
    ("output=kafka", "output: must be a map of settings"),
])
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, override: str, message: str) -> None:
    assert error(tmp_path, overrides=[override]).startswith(message)


def test_other_settings_are_read(tmp_path: Path) -> None:
    settings = load(tmp_path, "supervisor:\n  hang_timeout: 2m\n  max_restarts: 0\n  max_restarts_window: 5m\n"
                              "  backoff: {initial: 500ms, max: 5s}\nqueue.disk.max_size: 100 MiB\n"
                              "http: {enabled: true, host: 0.0.0.0, port: 6066}\nlogging.level: WARNING\n"
                              "debug.hang_file: /tmp/hang\n")
    assert settings.supervisor == config.SupervisorSettings(120.0, 0, 300.0, 0.5, 5.0)
    assert settings.queue_disk_max_size == 100 * 1024**2
    assert (settings.http_enabled, settings.http_host, settings.http_port) == (True, "0.0.0.0", 6066)
    assert settings.logging_level == "warning" and settings.debug_hang_file == "/tmp/hang"


def test_hang_timeout_is_three_periods_at_least_30s_unless_set(tmp_path: Path) -> None:
    assert load(tmp_path, modules("host", extra="  period: 1s\n")).hang_timeout_for("host") == 30.0
    assert load(tmp_path, modules("host", extra="  period: 20s\n")).hang_timeout_for("host") == 60.0
    assert load(tmp_path, overrides=["supervisor.hang_timeout=5s"]).hang_timeout_for("host") == 5.0


def test_settings_are_read_only_and_picklable(tmp_path: Path) -> None:
    settings = load(tmp_path, kafka_file(tmp_path, f"  username: agent\n  password: {PASSWORD}\n"))
    with pytest.raises(TypeError):
        settings.output.options["topic"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.tree["output"]["kafka"]["partition"].pop("hash")  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        settings.logging_level = "debug"  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings and copy.output.options["password"].reveal() == PASSWORD


def test_export_is_yaml_that_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    settings = load(tmp_path, modules("host", extra="  period: 7s\n"), [f"hostfs={tmp_path}",
                                                                          "output.file.enabled=true"])
    exported = export_yaml(settings)
    assert yaml.safe_load(exported)["output"]["file"]["enabled"] is True
    again = load(tmp_path, exported, name="exported.yml")
    assert again.tree == settings.tree and again.datasets == settings.datasets and again.output == settings.output


# --- secrets ------------------------------------------------------------------------------------------------


def test_the_kafka_password_can_come_from_the_environment(tmp_path: Path) -> None:
    settings = load(tmp_path, kafka_file(tmp_path, "  username: agent\n"),
                    environ={"HOSTAUDIT_OUTPUT__KAFKA__PASSWORD": PASSWORD})
    password = settings.output.options["password"]
    assert isinstance(password, Secret) and password.reveal() == PASSWORD


@pytest.mark.parametrize("name, text", [
    ("secrets.yaml", f"output.kafka.password: {PASSWORD}\noutput.kafka.ssl.key_passphrase: {PASSWORD}-2\n"),
    ("secrets.toml", f"[output.kafka]\npassword = '{PASSWORD}'\n[output.kafka.ssl]\nkey_passphrase = '{PASSWORD}-2'\n"),
    ("secrets.json",
     f'{{"output": {{"kafka": {{"password": "{PASSWORD}", "ssl": {{"key_passphrase": "{PASSWORD}-2"}}}}}}}}'),
])
def test_the_kafka_password_can_come_from_a_secrets_file(tmp_path: Path, name: str, text: str) -> None:
    secrets = tmp_path / name
    secrets.write_text(text)
    settings = load(tmp_path, kafka_file(tmp_path, "  username: agent\n  password: overridden\n"),
                    environ={"HOSTAUDIT_SECRETS_FILE": str(secrets)})
    assert settings.output.options["password"].reveal() == PASSWORD
    assert settings.output.options["ssl"]["key_passphrase"].reveal() == f"{PASSWORD}-2"
    assert settings.output.options["ssl"]["enabled"] is False  # a secret alone does not turn TLS on
    assert "secrets_file" not in settings.tree
    environ = {"HOSTAUDIT_SECRETS_FILE": str(secrets), "HOSTAUDIT_OUTPUT__KAFKA__PASSWORD": "from-env"}
    assert load(tmp_path, kafka_file(tmp_path, "  username: agent\n"), environ=environ
                ).output.options["password"].reveal() == "from-env"


def test_a_bad_secrets_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error(tmp_path, environ={"HOSTAUDIT_SECRETS_FILE": str(missing)}) == f"{missing}: secrets file not found"
    assert error(tmp_path, environ={"HOSTAUDIT_SECRETS_FILE": str(tmp_path / "s.py")}).startswith(
        "HOSTAUDIT_SECRETS_FILE:")
    broken = tmp_path / "broken.toml"
    broken.write_text(f"password = {PASSWORD}\n")
    message = error(tmp_path, environ={"HOSTAUDIT_SECRETS_FILE": str(broken)})
    assert message.startswith(f"{broken}: not valid TOML") and PASSWORD not in message


def test_a_password_alone_does_not_enable_the_kafka_output(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"HOSTAUDIT_OUTPUT__KAFKA__PASSWORD": PASSWORD})
    assert settings.output.type == "console"


def test_secrets_never_appear_in_export_repr_or_errors(tmp_path: Path) -> None:
    text = kafka_file(tmp_path, f"  username: agent\n  password: {PASSWORD}\n  ssl.key_passphrase: {PASSWORD}-k\n") \
        + f"cloud.auth_token: {PASSWORD}-t\nmy_secret: {PASSWORD}-s\n"
    settings = load(tmp_path, text)
    exported = export_yaml(settings)
    for shown in (exported, repr(settings), str(settings), repr(settings.output), repr(settings.datasets),
                  f"{settings.output.options['password']}"):
        assert PASSWORD not in shown
    tree = yaml.safe_load(exported)
    assert tree["output"]["kafka"]["password"] == "[redacted]"
    assert tree["output"]["kafka"]["ssl"]["key_passphrase"] == "[redacted]"
    assert tree["cloud"]["auth_token"] == "[redacted]" and tree["my_secret"] == "[redacted]"
    assert PASSWORD not in error(tmp_path, modules("host", extra=f"  host.api_token: {PASSWORD}-h\n")), \
        "an unknown dataset option is refused without its value"

    failing = [
        (kafka_file(tmp_path, f"  password: [{PASSWORD}]\n  username: a\n"), ()),
        (kafka_file(tmp_path, f"  password: {PASSWORD}\n"), ()),
        (kafka_file(tmp_path, f"  password: {PASSWORD}\n  hosts: []\n  username: a\n"), ()),
        (None, [f"output.kafka.password={{{PASSWORD}"]),
        (None, [f"output.kafka.password{PASSWORD}"]),
        (f"output.kafka.password: {PASSWORD}\noutput.kafka.ssl: [{PASSWORD}\n", ()),
    ]
    for failing_text, overrides in failing:
        assert PASSWORD not in error(tmp_path, failing_text, overrides)


def test_a_secret_prints_redacted_but_reveals_and_compares(tmp_path: Path) -> None:
    secret = Secret(PASSWORD)
    assert (str(secret), repr(secret), f"{secret}", f"{secret:>12}") == \
        ("[redacted]", "[redacted]", "[redacted]", "  [redacted]")
    assert secret.reveal() == PASSWORD and secret == Secret(PASSWORD) and secret != Secret("other")
    assert secret != PASSWORD and pickle.loads(pickle.dumps(secret)).reveal() == PASSWORD


# --- limits: durations, YAML aliases ------------------------------------------------------------------------


@pytest.mark.parametrize("line, key, problem", [
    ("period: 1ns", "period", "'1ns' is shorter than 10ms"),
    ("period: 9ms", "period", "'9ms' is shorter than 10ms"),
    ("period: 0.001", "period", "0.001 is shorter than 10ms"),
    ("period: 100000000000000000000000h", "period", "'100000000000000000000000h' is longer than 1 year"),
    ("period: 1.0e+26", "period", "1e+26 is longer than 1 year"),
    ("period: 8761h", "period", "'8761h' is longer than 1 year"),
    ("period: .nan", "period", "nan is not a duration"),
    ("period: .inf", "period", "inf is not a duration"),
    ("state.period: 1ns", "state.period", "'1ns' is shorter than 10ms"),
    ("state.period: 9000h", "state.period", "'9000h' is longer than 1 year"),
    ("host.state.period: 5ms", "host.state.period", "'5ms' is shorter than 10ms"),
])
def test_an_extreme_period_is_an_error_naming_the_key(tmp_path: Path, line: str, key: str, problem: str) -> None:
    assert error(tmp_path, modules("host", extra=f"  {line}\n")).startswith(f"hostaudit.modules[0].{key}: {problem}")


def test_periods_from_10ms_to_a_year_are_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, modules("host", extra="  period: 10ms\n  state.period: 8760h\n"))
    assert (settings.datasets["host"].period, settings.datasets["host"].state_period) == (0.01, 365 * 86400.0)


@pytest.mark.parametrize("override, message", [
    ("hostaudit.module_defaults.period=1ns", "hostaudit.module_defaults.period: '1ns' is shorter than 10ms"),
    ("hostaudit.module_defaults.state.period=1us", "hostaudit.module_defaults.state.period: '1us' is shorter"),
    ("supervisor.hang_timeout=1e30h", "supervisor.hang_timeout: '1e30h' is not a duration"),
    ("supervisor.hang_timeout=100000000000000000000h", "supervisor.hang_timeout: '100000000000000000000h' is "
                                                      "longer than 1 year"),
    ("supervisor.hang_timeout=.inf", "supervisor.hang_timeout: inf is not a duration"),
    ("supervisor.max_restarts_window=.nan", "supervisor.max_restarts_window: nan is not a duration"),
    ("supervisor.backoff.max=9000h", "supervisor.backoff.max: '9000h' is longer than 1 year"),
    ("supervisor.backoff.initial=1.0e+300", "supervisor.backoff.initial: 1e+300 is longer than 1 year"),
    ("output.kafka.timeout=9000h", "output.kafka.timeout: '9000h' is longer than 1 year"),
    ("output.kafka.broker_timeout=.inf", "output.kafka.broker_timeout: inf is not a duration"),
    ("output.kafka.keep_alive=1.0e+20", "output.kafka.keep_alive: 1e+20 is longer than 1 year"),
    ("output.kafka.bulk_flush_frequency=.nan", "output.kafka.bulk_flush_frequency: nan is not a duration"),
    ("output.kafka.backoff.max=1000000h", "output.kafka.backoff.max: '1000000h' is longer than 1 year"),
])
def test_absurd_or_non_finite_durations_are_errors_naming_the_key(tmp_path: Path, override: str,
                                                                  message: str) -> None:
    hosts = ["output.kafka.hosts=['localhost:9092']"] if override.startswith("output.kafka.") else []
    assert error(tmp_path, overrides=[override, *hosts]).startswith(message)


@pytest.mark.parametrize("value", ["8761h", 1e26, "100000000000000000000000h", float("nan"), "-9000h"])
def test_parse_duration_rejects_more_than_a_year(value: Any) -> None:
    with pytest.raises(ConfigError, match="is longer than 1 year|is not a duration"):
        parse_duration(value)


def alias_bomb(levels: int, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]" for level in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    import time

    started = time.process_time()
    message = error(tmp_path, alias_bomb(6))  # 9**6 values: 3.6 s of CPU before the limit, 9 levels: hours
    assert time.process_time() - started < 0.5
    assert message == f"{tmp_path / 'hostaudit.yml'}: line 6: YAML aliases expand to more than 100000 values " \
                      "(an alias bomb?): refused"
    assert "refused" in error(tmp_path, alias_bomb(9))


def test_more_than_100_yaml_aliases_are_refused(tmp_path: Path) -> None:
    text = "base: &b {x: 1}\nmany: [" + ", ".join(["*b"] * 101) + "]\n"
    assert error(tmp_path, text).endswith(": more than 100 YAML aliases: refused")
    text = "base: &b {x: 1}\nmany: [" + ", ".join(["*b"] * 100) + "]\n"
    assert len(load(tmp_path, text).tree["many"]) == 100


def test_a_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "a: &a [1, *a]\n").endswith("a YAML alias refers to a node that contains it: refused")
    assert error(tmp_path, "a: &a {b: {c: *a}}\n").endswith("a YAML alias refers to a node that contains it: refused")


def test_ordinary_yaml_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = ("common: &common {period: 3s}\nhostaudit.modules:\n- <<: *common\n  module: system\n"
            "  datasets: [host]\n")
    assert load(tmp_path, text).datasets["host"].period == 3.0


def test_an_alias_bomb_in_an_override_is_refused(tmp_path: Path) -> None:
    bomb = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x]"] + ["*a"] * 101) + "]"
    assert error(tmp_path, overrides=[f"my.list={bomb}"]) == "-E my.list: more than 100 YAML aliases: refused"


# --- Kafka topic and key against the datasets' fields -------------------------------------------------------


@pytest.mark.parametrize("template, fields", [
    ("hostaudit", []),
    ("x-%{[process.name]}", ["process.name"]),
    ("%{[event.dataset]}-%{[user.name]:nobody}-%{[host.id]}", ["event.dataset", "host.id"]),
    ("%{[process]}-%{[process.name]}", ["process", "process.name"]),
    ("%{[process.name]}-%{[process]}", ["process.name"]),
])
def test_format_string_fields_are_those_without_a_default(template: str, fields: list[str]) -> None:
    assert config.format_string_fields(template) == fields


def kafka_routing_log(tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: str, datasets: str) -> list[str]:
    caplog.clear()
    load(tmp_path, kafka_file(tmp_path, extra) + modules(*datasets.split()))
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("warning:")]


def test_a_kafka_topic_or_key_naming_a_field_a_dataset_never_sets_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warnings = kafka_routing_log(tmp_path, caplog, "  topic: 'x-%{[process.name]}'\n", "host user process")
    assert warnings == ["warning: output.kafka.topic: %{[process.name]} has no default and datasets host, user "
                        "never set process.name: the Kafka output will refuse those events (give a default, e.g. "
                        "%{[process.name]:none})"]
    warnings = kafka_routing_log(tmp_path, caplog, "  key: '%{[user.name]}'\n", "host process")
    assert len(warnings) == 1 and warnings[0].startswith("warning: output.kafka.key: %{[user.name]} has no "
                                                         "default and dataset host never sets user.name")


@pytest.mark.parametrize("extra, datasets", [
    ("", "host user process socket"),  # the defaults: topic hostaudit, key %{[host.id]}
    ("  topic: 'x-%{[process.name]}'\n", "process socket"),
    ("  topic: 'x-%{[process.name]:none}'\n", "host user"),
    ("  topic: '%{[event.dataset]}'\n  key: '%{[agent.id]}-%{[user.name]}'\n", "user process socket"),
    ("  topic: '%{[user]}'\n", "user process"),
])
def test_kafka_format_strings_every_enabled_dataset_can_fill_are_not_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: str, datasets: str) -> None:
    assert kafka_routing_log(tmp_path, caplog, extra, datasets) == []


def test_no_routing_warning_when_kafka_is_not_the_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load(tmp_path, "output.kafka:\n  enabled: false\n  topic: 'x-%{[process.name]}'\n" + modules("host"))
    assert "warning:" not in caplog.text


# --- every dataset's own options, checked at load by the schema its folder declares ----------------------------


@pytest.mark.parametrize("extra, message", [
    ("  process.backend: foo\n", "hostaudit.modules[0].process.backend: 'foo' is not one of auto, netlink, procfs"),
    ('  socket.include_localhost: "sometimes"\n', "hostaudit.modules[0].socket.include_localhost: 'sometimes' is not true or false"),
    ("  user.detect_password_changes: 3\n", "hostaudit.modules[0].user.detect_password_changes: 3 is not true or false"),
    ("  process.hash.max_file_size: -1\n",
     "hostaudit.modules[0].process.hash.max_file_size: -1 is not a size (use e.g. 1GiB, 100 MiB, 50MB, 1024)"),
    ("  period: 0s\n", "hostaudit.modules[0].period: '0s' must be greater than 0 (use e.g. 500ms, 1s, 1m, 12h)"),
    ("  period: -1s\n", "hostaudit.modules[0].period: '-1s' must be greater than 0 (use e.g. 500ms, 1s, 1m, 12h)"),
    ("  state.period: abc\n",
     "hostaudit.modules[0].state.period: 'abc' is not a duration (use e.g. 500ms, 1s, 1m, 12h)"),
    ("  perod: 1s\n", "hostaudit.modules[0].perod: unknown setting (did you mean period?)"),
    ("  process.backnd: auto\n", "hostaudit.modules[0].process.backnd: unknown setting (did you mean backend?)"),
    ("  socket.include_udp: 1\n", "hostaudit.modules[0].socket.include_udp: 1 is not true or false"),
    ("  user.source: ldap\n", "hostaudit.modules[0].user.source: 'ldap' is not one of files, nss"),
    ("  host.anything: 1\n", "hostaudit.modules[0].host.anything: unknown setting (known: none)"),
])
def test_bad_dataset_and_module_values_are_one_line_naming_key_value_and_what_is_allowed(
        tmp_path: Path, extra: str, message: str) -> None:
    assert error(tmp_path, modules("host", "process", "socket", "user", extra=extra)) == message


def test_unknown_dataset_and_two_outputs_are_refused(tmp_path: Path) -> None:
    assert error(tmp_path, modules("host", "tcp")) == \
        "hostaudit.modules[0].datasets: unknown dataset 'tcp' (known: host, login, package, process, socket, user)"
    assert "output" in error(tmp_path, "output.file.enabled: true\noutput.console.enabled: true\n")


def test_values_accepted_before_stay_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, modules("process", "socket", "user", extra=(
        "  period: 500ms\n  state.period: 12h\n  process.backend: NETLINK\n  process.hash.max_file_size: 100 MiB\n"
        "  socket.include_localhost: true\n  socket.full_scan_interval: 1m\n  socket.stream_buffer_bytes: 1GiB\n"
        "  user.detect_password_changes: false\n")))
    assert settings.datasets["process"].period == 0.5 and settings.datasets["user"].state_period == 12 * 3600


# --- options as the collectors get them (no pydantic in the agent's processes) -----------------------------

CHANGED_OPTIONS: dict[str, dict[str, Any]] = {
    "process": {"backend": "procfs", "hash": {"hash_types": ["SHA256", "md5"], "max_file_size": "1 MiB"}},
    "socket": {"include_localhost": True},
    "user": {"detect_password_changes": False},
}


@pytest.mark.parametrize("name", sorted(BUILT_DATASETS))
def test_checked_options_carry_every_checked_value_plainly_and_survive_the_pickle_to_a_child(name: str) -> None:
    from actors.datasets import CheckedOptions, checked_options, dataset_options, DatasetContext
    from actors.options import validate

    model = validate(CATALOG.options_schema(name), CHANGED_OPTIONS.get(name, {}), name)
    plain = pickle.loads(pickle.dumps(checked_options(model)))

    def same(model: Any, plain: Any) -> None:
        assert isinstance(plain, CheckedOptions)
        assert set(vars(plain)) == set(type(model).model_fields)
        for field in type(model).model_fields:
            value = getattr(model, field)
            if hasattr(type(value), "model_fields"):
                same(value, getattr(plain, field))
            else:
                assert getattr(plain, field) == value, f"{name}.{field}"
    same(model, plain)
    with pytest.raises(AttributeError, match="read-only"):
        plain.anything = 1
    context = DatasetContext(hostfs=Path("/"), options=plain)
    assert dataset_options(context, name) is plain  # taken as checked: not parsed again
    parsed = dataset_options(DatasetContext(hostfs=Path("/"), options=CHANGED_OPTIONS.get(name, {})), name)
    same(parsed, plain)  # raw options (tests, tools) are parsed by the dataset's schema, to the same values


def test_the_plan_hands_each_collector_checked_options_not_the_raw_mapping(tmp_path: Path) -> None:
    from actors.datasets import CheckedOptions
    from actors.runtime.agent import AgentIdentity
    from actors.runtime.supervisor import plan

    settings = load_settings(None, [
        "hostaudit.modules=[{module: system, datasets: [process, socket], period: 1s, "
        "process.hash.hash_types: [sha256], socket.include_localhost: true}]", f"path.data={tmp_path}"],
        environ={}, catalog=CATALOG)
    children = plan(settings, AgentIdentity("id", "ephemeral"), -1).children
    specs = {child.name: pickle.loads(child.spec[1]) for child in children}
    assert isinstance(specs["process"].options, CheckedOptions)
    assert specs["process"].options.hash.hash_types == ("sha256",)
    assert specs["socket"].options.include_localhost is True
