"""The command line's entry points for the indexer: `hostaudit index` and `hostaudit test index-config`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from actors import __version__
from actors.options import ConfigError

log = logging.getLogger("hostaudit.indexer")


def _load(config: str | Path | None, overrides: Sequence[str]):  # -> IndexerSettings | None
    from actors.indexer.settings import load_indexer_settings

    try:
        return load_indexer_settings(config, overrides)
    except ConfigError as error:
        print(f"hostaudit: configuration error: {error}", file=sys.stderr)
        return None


def check_config(config: str | Path | None, overrides: Sequence[str]) -> int:
    """`hostaudit test index-config`: "Config OK", or one line naming the setting and the problem (exit 1)."""
    if _load(config, overrides) is None:
        return 1
    print("Config OK")
    return 0


def index(config: str | Path | None, overrides: Sequence[str]) -> int:
    """`hostaudit index`: run the indexer service in the foreground until SIGTERM or SIGINT."""
    settings = _load(config, overrides)
    if settings is None:
        return 1
    import setproctitle

    from actors.indexer.supervisor import run
    from actors.runtime.logs import configure_logging

    setproctitle.setproctitle("hostaudit: indexer")
    configure_logging(settings.logging_level, "indexer")
    log.info("hostaudit %s indexer starting: %d worker(s), topics %s from %s (group %s) into %s", __version__,
             settings.workers, ", ".join(settings.kafka.topics), ", ".join(settings.kafka.client["hosts"]),
             settings.kafka.group_id, ", ".join(settings.engine.hosts))
    return run(settings)
