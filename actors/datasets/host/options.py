"""The host dataset's options: it has none (as Auditbeat's); any `host.*` key is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.options import check_known


@dataclass(frozen=True)
class HostOptions:
    """No options."""


def parse_options(raw: Any) -> HostOptions:
    """Check `host.*` (there is nothing to set); ConfigError naming the key otherwise."""
    check_known("host", raw, ())
    return HostOptions()
