"""Logging for every hostaudit process: one line per record on stderr, tagged with the process's role."""

from __future__ import annotations

import logging
import sys
import time


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def configure_logging(level: str, role: str) -> None:
    """Send log records to stderr as `<UTC time> <LEVEL> [<role>] <logger>: <message>`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter(f"%(asctime)s %(levelname)s [{role}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every reconnect attempt at WARNING/ERROR; hostaudit reports an outage itself, once a
    # minute with the spool depth, so the client's own lines only show at debug level.
    logging.getLogger("kafka").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
    logging.getLogger("pykka").setLevel(max(logging.WARNING, root.level))
