"""Modules the forkserver imports once, so every child process shares their pages instead of loading its own."""

import json  # noqa: F401
import signal
import sqlite3  # noqa: F401

import psutil  # noqa: F401
import pykka  # noqa: F401
import setproctitle  # noqa: F401

import actors.runtime.collector  # noqa: F401
import actors.datasets.host.dataset  # noqa: F401
import actors.datasets.login.dataset  # noqa: F401
import actors.datasets.package.dataset  # noqa: F401
import actors.datasets.process.dataset  # noqa: F401
import actors.datasets.socket.dataset  # noqa: F401
import actors.datasets.user.dataset  # noqa: F401
import actors.runtime.doorbell  # noqa: F401
import actors.outputs.console  # noqa: F401
import actors.outputs.file  # noqa: F401
import actors.runtime.producer  # noqa: F401
import actors.runtime.worker  # noqa: F401

setproctitle.setproctitle("hostaudit: forkserver")
# A service manager stops the whole process group at once (systemd's default KillMode). The forkserver must
# outlive that signal: the supervisor learns of each child's exit through it. It exits by itself when the
# supervisor is gone. Children set their own SIGTERM handler.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
