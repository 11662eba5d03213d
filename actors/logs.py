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
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("pykka").setLevel(max(logging.WARNING, root.level))
