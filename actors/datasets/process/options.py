"""The process dataset's options: `process.backend` and `process.hash.*`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.datasets.process.exe_hash import HashOptions, hash_options
from actors.options import check_known, choice

BACKENDS = ("auto", "netlink", "procfs")


@dataclass(frozen=True)
class ProcessOptions:
    """The `process.*` options: where exec notifications come from, and executable hashing."""

    backend: str = "auto"
    hash: HashOptions = field(default_factory=HashOptions)


def parse_options(raw: Any) -> ProcessOptions:
    """Read and check `process.*`; ConfigError naming the key, the value and what is allowed."""
    options = check_known("process", raw, ("backend", "hash"))
    return ProcessOptions(backend=choice("process.backend", options.get("backend", "auto"), BACKENDS),
                          hash=hash_options(options.get("hash")))

