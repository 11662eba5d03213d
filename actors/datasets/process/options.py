"""The process dataset's options, declared once with their defaults: `process.backend` and `process.hash.*`."""

from __future__ import annotations

from typing import Annotated, Any

from actors.datasets.process.exe_hash import HASH_TYPES
from actors.options import Boolean, Choice, ConfigError, DatasetOptions, Schema, Size, checked, validate

BACKENDS = ("auto", "netlink", "procfs")


def _hash_types(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{value!r} is not a list such as [sha1, sha256]")
    lowered = tuple(dict.fromkeys(str(name).lower() for name in value))
    if unknown := [name for name in lowered if name not in HASH_TYPES]:
        raise ConfigError(f"unknown hash type {', '.join(map(repr, unknown))} (allowed: {', '.join(HASH_TYPES)})")
    return lowered


class HashOptions(Schema):
    """`process.hash.*`: which digests to compute, the largest file hashed, and the read rate limit."""

    enabled: Boolean = True
    # Any of Auditbeat's types (HASH_TYPES); duplicates and case do not matter.
    hash_types: Annotated[tuple[str, ...], checked(_hash_types)] = ("sha1",)
    # Larger executables are not hashed (error.message says so).
    max_file_size: Size = 100 * 1024 * 1024
    # Hashing reads at most this many bytes per second (a token bucket).
    scan_rate_per_sec: Size = 50 * 1024 * 1024


class ProcessOptions(DatasetOptions):
    """The `process.*` options: where exec notifications come from, and executable hashing."""

    # auto: the kernel's process-events connector when it can be opened (root), the /proc poll otherwise;
    # netlink: the connector is required; procfs: the /proc poll only.
    backend: Choice(*BACKENDS) = "auto"
    hash: HashOptions = HashOptions()


def parse_options(raw: Any) -> ProcessOptions:
    """Read and check `process.*`; ConfigError naming the key, the value and what is allowed."""
    return validate(ProcessOptions, raw, "process")


def hash_options(raw: Any) -> HashOptions:
    """Read and check `process.hash.*` alone."""
    return validate(HashOptions, raw, "process.hash")


SCHEMA = ProcessOptions  # what the dataset catalog hands the configuration
