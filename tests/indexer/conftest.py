"""Fixtures of the indexer's tests: indexer subprocesses that are always cleaned up, the tests' index template."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.indexer.support import IndexerProcess, install_template, unique_name
from tests.search_support import http_json


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


@pytest.fixture
def test_index(templated_search_url: str) -> Iterator[tuple[str, str]]:
    """An index format string of the test's own (data streams under the template's hostaudit-* pattern) and
    the pattern that finds them; the data streams are deleted afterwards."""
    prefix = unique_name("hostaudit-t")
    yield f"{prefix}-%{{[event.dataset]}}", f"{prefix}-*"
    http_json(f"{templated_search_url}/_data_stream/{prefix}-*", "DELETE")
