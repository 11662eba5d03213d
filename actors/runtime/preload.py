"""Modules the forkserver imports once, so every child process shares their pages instead of loading its own."""

import gc
import importlib
import signal

import setproctitle

from actors.datasets import BUILT_DATASETS

SHARED_MODULES = ("json", "sqlite3", "psutil", "pykka", "pydantic", "actors.runtime.collector",
                  "actors.runtime.doorbell", "actors.runtime.producer", "actors.runtime.worker",
                  "actors.outputs.console", "actors.outputs.file", *BUILT_DATASETS.values())
for module in SHARED_MODULES:
    importlib.import_module(module)

setproctitle.setproctitle("hostaudit: forkserver")
# A service manager stops the whole process group at once (systemd's default KillMode). The forkserver must
# outlive that signal: the supervisor learns of each child's exit through it. It exits by itself when the
# supervisor is gone. Children set their own SIGTERM handler.
signal.signal(signal.SIGTERM, signal.SIG_IGN)

# What is imported so far lives as long as the forkserver: out of the collector's reach, so a child's full
# collection does not write to the header of every object it inherited (which copied about 9 MiB of shared pages
# into each child at its first full collection). Not collected first: the holes that would leave in shared pages
# are where a child's first allocations would go, copying those pages (0.3 MiB more per child).
gc.freeze()
