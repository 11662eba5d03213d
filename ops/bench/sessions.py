"""Stopping a benchmarked program started in a session of its own (start_new_session=True)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_session(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM `process`, wait up to `grace` seconds, then SIGKILL whatever of its session is left; its exit
    code, or None when it had to be killed."""
    code = None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    else:
        code = process.returncode
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything of the session left behind
    except ProcessLookupError:
        pass
    process.wait(10)
    return code
