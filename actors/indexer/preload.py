"""Modules the indexer's forkserver imports once, so every worker process shares their pages."""

import importlib
import signal

import setproctitle

for _module in ("json", "kafka", "pykka", "urllib3", "actors.indexer.bulk", "actors.indexer.consumer",
                "actors.indexer.dead_letter", "actors.indexer.documents", "actors.indexer.worker",
                "actors.indexer.writer"):
    importlib.import_module(_module)

setproctitle.setproctitle("hostaudit: indexer forkserver")
# As the agent's forkserver: it outlives a SIGTERM sent to the whole process group (the supervisor learns of
# each worker's exit through it) and exits by itself when the supervisor is gone.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
