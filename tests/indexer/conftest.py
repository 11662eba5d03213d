"""Fixtures of the indexer's tests: indexer subprocesses that are always cleaned up, the tests' index template."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.indexer.support import IndexerProcess, install_template


@pytest.fixture
def indexer_factory(tmp_path: Path) -> Iterator[Callable[..., IndexerProcess]]:
    started: list[IndexerProcess] = []

    def start(*overrides: str, env: dict[str, str] | None = None) -> IndexerProcess:
        indexer = IndexerProcess(tmp_path, overrides, env).start()
        started.append(indexer)
        return indexer

    yield start
    for indexer in started:
        indexer.kill_all()


@pytest.fixture(scope="session")
def templated_search_url(search_url: str) -> str:
    """The session's engine with the tests' index template for hostaudit-* installed."""
    install_template(search_url)
    return search_url
