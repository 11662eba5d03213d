"""The host dataset's options: it has none (as Auditbeat's); any `host.*` key is refused."""

from __future__ import annotations

from typing import Any

from actors.options import DatasetOptions, validate


class HostOptions(DatasetOptions):
    """No options."""


def parse_options(raw: Any) -> HostOptions:
    """Check `host.*` (there is nothing to set); ConfigError naming the key otherwise."""
    return validate(HostOptions, raw, "host")


SCHEMA = HostOptions  # what the dataset catalog hands the configuration
