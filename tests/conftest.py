"""Shared pytest fixtures: a running agent factory that always cleans up its processes, a Kafka broker, an OpenSearch node."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from tests.agent_harness import Agent

if TYPE_CHECKING:
    from tests.kafka_support import KafkaBroker


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


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker named by KAFKA_BOOTSTRAP_SERVERS (ops/test.sh starts one), else one started here."""
    import os

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    from tests.kafka_support import KafkaBroker

    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def search_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The OpenSearch node named by HOSTAUDIT_TEST_SEARCH_URL (ops/test.sh starts one), else one started here."""
    import os

    if os.environ.get("HOSTAUDIT_TEST_SEARCH_URL"):
        yield os.environ["HOSTAUDIT_TEST_SEARCH_URL"].rstrip("/")
        return
    from tests.search_support import OpenSearchNode

    with OpenSearchNode(tmp_path_factory.mktemp("opensearch")) as node:
        yield node.url


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator["KafkaBroker"]:
    """A broker of the test's own, to stop, restart or give TLS listeners without disturbing the others."""
    from tests.kafka_support import KafkaBroker

    broker = KafkaBroker(tmp_path / "kafka", extra_properties={"broker.session.timeout.ms": "4000",
                                                               "broker.heartbeat.interval.ms": "500"})
    yield broker
    broker.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="fault-injection soak: 100 rounds of random kills (tests/faults), not the default 12")


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))
