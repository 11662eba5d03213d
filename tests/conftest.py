"""Shared pytest fixtures: a running agent factory that always cleans up its processes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.agent_harness import Agent


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(config: str | None = None, overrides: tuple[str, ...] = (), workdir: Path | None = None,
              env: dict[str, str] | None = None) -> Agent:
        agent = Agent(workdir or tmp_path, config, overrides, env).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill_all()
