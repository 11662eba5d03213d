"""The package dataset through the whole agent: a real .deb installed, upgraded and removed with dpkg on this host."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.agent_harness import Agent, wait_for

PACKAGE_ONLY = "hostaudit.modules=[{module: system, datasets: [package], period: 200ms}]"
# Removals are reported once dpkg's files have been still for 2 s (a half-written status never removes
# anything), so the deadlines leave room for that and for a loaded machine.
DEADLINE = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("dpkg-deb") is None
                                or not Path("/var/lib/dpkg/status").exists(),
                                reason="needs root and dpkg (installs a package on this host)")


def build_deb(workdir: Path, name: str, version: str) -> Path:
    """A tiny Architecture: all package with one file, built with dpkg-deb."""
    root = workdir / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "hello.txt").write_text(f"{name} {version}\n")
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: hostaudit tests <tests@example.org>\n"
        "Installed-Size: 1\nSection: misc\nPriority: optional\nHomepage: https://example.org/hostaudit\n"
        "Description: hostaudit integration test package\n Installed and removed by tests/integration.\n")
    deb = workdir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return deb


def dpkg(*arguments: str) -> None:
    subprocess.run(["dpkg", *arguments], check=True, capture_output=True, timeout=120)


def about(agent: Agent, name: str, action: str) -> list[dict]:
    return [event for event in agent.events()
            if event["event"]["action"] == action and event["package"]["name"] == name]


def wait_for_package_event(agent: Agent, name: str, action: str) -> dict:
    return agent.wait_for_event(lambda e: e["event"]["action"] == action and e["package"]["name"] == name,
                                DEADLINE, f"{action} of {name}")


def test_installed_upgraded_and_removed_deb_is_reported_also_across_a_restart(agent_factory,
                                                                              tmp_path: Path) -> None:
    name = f"hostaudit-probe-{uuid.uuid4().hex[:8]}"
    first_deb, second_deb = build_deb(tmp_path, name, "1.0-1"), build_deb(tmp_path, name, "1.1-1")
    try:
        agent = agent_factory(overrides=(PACKAGE_ONLY,), workdir=tmp_path / "agent")
        agent.wait_for_event(lambda e: e["event"]["action"] == "existing_package", DEADLINE, "the package state")
        dpkg("-i", str(first_deb))
        installed = wait_for_package_event(agent, name, "package_installed")
        assert installed["message"] == f"Package {name} (1.0-1) installed"
        assert installed["package"]["type"] == "dpkg" and installed["package"]["architecture"] == "all"
        assert installed["package"]["reference"] == "https://example.org/hostaudit"
        assert installed["package"]["description"] == "hostaudit integration test package"
        assert "detected_at_startup" not in installed["system"]["audit"]

        dpkg("-i", str(second_deb))
        updated = wait_for_package_event(agent, name, "package_updated")
        assert updated["message"] == f"Package {name} (1.1-1) updated"
        assert "package.version" in updated["system"]["audit"]["changes"]["fields"]
        assert updated["system"]["audit"]["changes"]["previous"]["package"]["version"] == "1.0-1"

        dpkg("-r", name)
        removed = wait_for_package_event(agent, name, "package_removed")
        assert removed["message"] == f"Package {name} (1.1-1) removed"
        assert [len(about(agent, name, action)) for action in
                ("package_installed", "package_updated", "package_removed")] == [1, 1, 1]
        wait_for(lambda: agent.committed_sequence("package") >= removed["event"]["sequence"], 10,
                 "the package state committed")
        assert agent.terminate() == 0

        # While the agent is down: installed again. Reported at the next start, once, marked as such.
        dpkg("-i", str(first_deb))
        restarted = agent_factory(overrides=(PACKAGE_ONLY,), workdir=tmp_path / "agent")  # the same output files
        again = restarted.wait_for_event(
            lambda e: e["event"]["action"] == "package_installed" and e["package"]["name"] == name
            and e["event"]["sequence"] > removed["event"]["sequence"], DEADLINE, "the install made while down")
        assert again["system"]["audit"]["detected_at_startup"] is True
        dpkg("-r", name)
        wait_for(lambda: len(about(restarted, name, "package_removed")) == 2, DEADLINE, "the second removal")
        assert len(about(restarted, name, "package_installed")) == 2, "the downtime install is reported once"
        assert len(about(restarted, name, "package_updated")) == 1
    finally:
        subprocess.run(["dpkg", "--purge", name], capture_output=True, timeout=120)
