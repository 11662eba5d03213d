"""`hostaudit test output`: connect to the configured output, check it can be written, print a report."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from actors.config import Settings


def check_output(settings: Settings) -> int:
    """Print a Beats-style report of the enabled output; return 0 when it is usable, 1 otherwise."""
    kind, options = settings.output.type, settings.output.options
    if kind == "kafka":
        from actors.outputs.kafka import check_kafka
        return check_kafka(options)
    if kind == "file":
        return _check_file(options)
    print("console: stdout ... OK")
    return 0


def _check_file(options: Any) -> int:
    directory = Path(options["path"])
    print(f"file: {directory}")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = directory / ".hostaudit-test-output"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        print(f"  write ... ERROR {error.strerror}: {directory}", file=sys.stderr)
        return 1
    print(f"  write ... OK ({'root' if os.geteuid() == 0 else 'user ' + str(os.geteuid())})")
    return 0
