"""Modules the indexer's forkserver imports once, so every worker process shares their pages."""

import json  # noqa: F401
import signal

import kafka  # noqa: F401
import pykka  # noqa: F401
import setproctitle
import urllib3  # noqa: F401

import actors.indexer.bulk  # noqa: F401
import actors.indexer.consumer  # noqa: F401
import actors.indexer.dead_letter  # noqa: F401
import actors.indexer.documents  # noqa: F401
import actors.indexer.worker  # noqa: F401
import actors.indexer.writer  # noqa: F401

setproctitle.setproctitle("hostaudit: indexer forkserver")
# As the agent's forkserver: it outlives a SIGTERM sent to the whole process group (the supervisor learns of
# each worker's exit through it) and exits by itself when the supervisor is gone.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
