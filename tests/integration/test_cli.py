"""The hostaudit command line: test config, export config, version, and one-line errors before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_harness import REPO

# The example from the Auditbeat announcement, as shipped (tests/unit/test_config.py checks it verbatim).
ANNOUNCEMENT = (REPO / "settings" / "auditbeat-example.yml").read_text().rsplit("hostaudit.modules:\n", 1)[1]


def hostaudit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_version() -> None:
    result = hostaudit("version")
    assert result.returncode == 0 and result.stdout.startswith("hostaudit version 0.1.0")


def test_test_config_ok(tmp_path: Path) -> None:
    result = hostaudit("test", "config", "-E", f"path.data={tmp_path}")
    assert (result.returncode, result.stdout.strip()) == (0, "Config OK")


@pytest.mark.parametrize("config, expected", [
    ("hostaudit.modules:\n- module: system\n  datasets: [nosuch]\n", "nosuch"),
    ("hostaudit.modules:\n- module: system\n  datasets: [host]\n  period: 1x\n", "period"),
    ("hostaudit.modules:\n- module: system\n  datasets: [host]\n  period: 0s\n", "period"),
    ("hostaudit.modules:\n- module: system\n  datasets: [host]\n  period: -5s\n", "period"),
    ("output.file.path: /tmp/x\noutput.console.enabled: true\n", "only one output"),
    ("output.kafka:\n  hosts: ['127.0.0.1:9092']\n  colour: blue\n", "output.kafka.colour: unknown setting"),
    ("hostaudit.modules: [\n", "hostaudit.yml"),
])
def test_invalid_config_is_one_line_on_stderr_and_exit_1(tmp_path: Path, config: str, expected: str) -> None:
    path = tmp_path / "hostaudit.yml"
    path.write_text(config)
    for command in (("test", "config"), ("run",)):
        result = hostaudit(*command, "-c", str(path), "-E", f"path.data={tmp_path / 'data'}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], result.stderr
        assert not (tmp_path / "data").exists(), "nothing started before the configuration was validated"


@pytest.mark.parametrize("root", ["hostaudit.modules", "auditbeat.modules"])
def test_the_announcement_example_fails_only_on_datasets_not_built_yet(tmp_path: Path, root: str) -> None:
    from actors.datasets import BUILT_DATASETS

    path = tmp_path / "auditbeat.yml"
    path.write_text(f"{root}:\n{ANNOUNCEMENT}")
    result = hostaudit("test", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    unbuilt = [name for name in ("process", "socket") if name not in BUILT_DATASETS]
    if not unbuilt:
        assert result.returncode == 0 and result.stdout.strip() == "Config OK"
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert f"datasets not built yet: {', '.join(unbuilt)}" in lines[0]


def test_export_config_redacts_secrets_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "hostaudit.yml"
    path.write_text("output.kafka:\n  hosts: ['127.0.0.1:9092']\n  username: agent\n  password: file-s3cret\n")
    result = hostaudit("export", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "file-s3cret" not in result.stdout + result.stderr and "[redacted]" in result.stdout
    result = hostaudit("export", "config", "-c", str(path), "-E", f"path.data={tmp_path}",
                       env={"HOSTAUDIT_OUTPUT__KAFKA__PASSWORD": "env-s3cret"})
    assert "env-s3cret" not in result.stdout + result.stderr and "username: agent" in result.stdout


def test_overrides_from_e_and_environment(tmp_path: Path) -> None:
    result = hostaudit("export", "config", "-E", f"path.data={tmp_path}", "-E", "supervisor.max_restarts=9",
                       env={"HOSTAUDIT_HTTP__PORT": "5099"})
    assert "max_restarts: 9" in result.stdout and "port: 5099" in result.stdout


@pytest.mark.parametrize("line, expected", [
    ("period: 1ns", "hostaudit.modules[0].period: '1ns' is shorter than 10ms"),
    ("period: 100000000000000000000000h", "hostaudit.modules[0].period: '100000000000000000000000h' is longer "
                                          "than 1 year"),
    ("period: 1.0e+26", "hostaudit.modules[0].period: 1e+26 is longer than 1 year"),
    ("state.period: 1ns", "hostaudit.modules[0].state.period: '1ns' is shorter than 10ms"),
    ("period: .nan", "hostaudit.modules[0].period: nan is not a duration"),
])
def test_an_extreme_period_is_refused_by_test_config(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "hostaudit.yml"
    path.write_text(f"hostaudit.modules:\n- module: system\n  datasets: [host]\n  {line}\n")
    result = hostaudit("test", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1, result
    assert lines[0].startswith(f"hostaudit: configuration error: {expected}"), lines


def test_an_absurd_supervisor_duration_is_refused_by_test_config(tmp_path: Path) -> None:
    result = hostaudit("test", "config", "-E", f"path.data={tmp_path}", "-E", "supervisor.hang_timeout=9000h")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "supervisor.hang_timeout: '9000h' is longer than" in lines[0]


def test_a_yaml_alias_bomb_is_refused_by_test_config_in_well_under_a_second(tmp_path: Path) -> None:
    import time

    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, 8)]
    path = tmp_path / "bomb.yml"
    path.write_text("\n".join(lines) + "\n")  # 9**7 values once expanded: 30 s of CPU without the limit
    plain = tmp_path / "plain.yml"
    plain.write_text("logging.level: info\n")
    baseline = time.monotonic()
    hostaudit("test", "config", "-c", str(plain), "-E", f"path.data={tmp_path}")  # the same work but the bomb
    startup = time.monotonic() - baseline
    started = time.monotonic()
    result = hostaudit("test", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result
    assert lines[0] == (f"hostaudit: configuration error: {path}: line 6: YAML aliases expand to more than 100000 "
                        "values (an alias bomb?): refused")
    assert elapsed - startup < 0.5, (elapsed, startup)


def test_test_config_warns_of_a_kafka_topic_field_an_enabled_dataset_never_sets(tmp_path: Path) -> None:
    path = tmp_path / "hostaudit.yml"
    path.write_text("hostaudit.modules:\n- module: system\n  datasets: [host, process]\n"
                    "output.kafka:\n  hosts: ['127.0.0.1:9092']\n  topic: 'x-%{[process.name]}'\n")
    result = hostaudit("test", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    assert (result.returncode, result.stdout.strip()) == (0, "Config OK"), result
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: output.kafka.topic: %{[process.name]} has no default and dataset host never sets "
                        "process.name: the Kafka output will refuse those events (give a default, e.g. "
                        "%{[process.name]:none})"], result.stderr
    path.write_text("hostaudit.modules:\n- module: system\n  datasets: [process, socket]\n"
                    "output.kafka:\n  hosts: ['127.0.0.1:9092']\n  topic: 'x-%{[process.name]}'\n")
    result = hostaudit("test", "config", "-c", str(path), "-E", f"path.data={tmp_path}")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "Config OK", ""), result


@pytest.mark.parametrize("option, expected", [
    ("process.backend: foo", "hostaudit.modules[0].process.backend: 'foo' is not one of auto, netlink, procfs"),
    ('socket.include_localhost: "sometimes"',
     "hostaudit.modules[0].socket.include_localhost: 'sometimes' is not true or false"),
    ("user.detect_password_changes: 3", "hostaudit.modules[0].user.detect_password_changes: 3 is not true or false"),
    ("process.hash.max_file_size: -1",
     "hostaudit.modules[0].process.hash.max_file_size: -1 is not a size (use e.g. 1GiB, 100 MiB, 50MB, 1024)"),
    ("period: 0s", "hostaudit.modules[0].period: '0s' must be greater than 0 (use e.g. 500ms, 1s, 1m, 12h)"),
    ("period: -1s", "hostaudit.modules[0].period: '-1s' must be greater than 0 (use e.g. 500ms, 1s, 1m, 12h)"),
    ("state.period: abc", "hostaudit.modules[0].state.period: 'abc' is not a duration (use e.g. 500ms, 1s, 1m, 12h)"),
    ("perod: 1s", "hostaudit.modules[0].perod: unknown setting (did you mean period?)"),
])
def test_test_config_and_run_refuse_a_bad_dataset_option_before_forking(tmp_path: Path, option: str,
                                                                        expected: str) -> None:
    modules = f"hostaudit.modules=[{{module: system, datasets: [process, socket], {option}}}]"
    checked = hostaudit("test", "config", "-E", modules)
    assert checked.returncode == 1 and checked.stdout == ""
    assert checked.stderr == f"hostaudit: configuration error: {expected}\n"
    data = tmp_path / "data"
    ran = hostaudit("run", "-E", f"path.data={data}", "-E", modules)
    assert ran.returncode == 1
    assert ran.stderr == f"hostaudit: configuration error: {expected}\n", "one line, no traceback, no child logs"
    assert not data.exists(), "refused before anything was created or forked"


@pytest.mark.parametrize("overrides, expected", [
    (["hostaudit.modules=[{module: system, datasets: [host, tcp]}]"],
     "hostaudit.modules[0].datasets: unknown dataset 'tcp' (known: host, login, package, process, socket, user)"),
    (["output.file.enabled=true", "output.console.enabled=true"],
     "output: only one output can be enabled, found: console, file"),
])
def test_run_refuses_an_unknown_dataset_and_two_outputs_before_forking(tmp_path: Path, overrides: list[str],
                                                                        expected: str) -> None:
    arguments = [item for override in overrides for item in ("-E", override)]
    checked = hostaudit("test", "config", *arguments)
    assert (checked.returncode, checked.stderr) == (1, f"hostaudit: configuration error: {expected}\n")
    data = tmp_path / "data"
    ran = hostaudit("run", "-E", f"path.data={data}", *arguments)
    assert (ran.returncode, ran.stderr) == (1, f"hostaudit: configuration error: {expected}\n")
    assert not data.exists(), "refused before anything was created or forked"
