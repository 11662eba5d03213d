"""The agent's counters: one stats document from the children's heartbeats, its log line and Prometheus text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from actors.runtime.monitoring import build_stats, log_stats, prometheus_text


def children(lost: int) -> dict[str, dict[str, object]]:
    return {"process": {"alive": True, "events": 12, "items": 40, "lost": lost, "restarts": 1},
            "producer": {"alive": True, "acknowledged": {"process": 10}}}


def test_the_log_line_names_lost_kernel_notifications_only_when_there_are_some(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hostaudit.monitoring"):
        log_stats(build_stats(children(0), tmp_path))
        log_stats(build_stats(children(7), tmp_path))
    quiet, lossy = caplog.messages
    assert "process: 12 emitted/10 acked, 1 restarts;" in quiet and "lost" not in quiet
    assert "process: 12 emitted/10 acked, 1 restarts, 7 kernel notifications lost;" in lossy


def test_lost_kernel_notifications_are_a_prometheus_counter_per_dataset(tmp_path: Path) -> None:
    text = prometheus_text(build_stats(children(7), tmp_path))
    assert 'hostaudit_kernel_events_lost_total{dataset="process"} 7\n' in text
    assert "# TYPE hostaudit_kernel_events_lost_total counter\n" in text
