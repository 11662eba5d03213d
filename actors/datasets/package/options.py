"""The package dataset's options: `package.databases`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.options import ConfigError, check_known, choice

DATABASES = ("dpkg", "rpm", "apk")


@dataclass(frozen=True)
class PackageOptions:
    """`databases`: the package databases to read (each only when it exists on the host); default all."""

    databases: tuple[str, ...] = DATABASES


def parse_options(raw: Any) -> PackageOptions:
    """Read and check `package.*`; ConfigError naming the key, the value and what is allowed."""
    options = check_known("package", raw, ("databases",))
    return PackageOptions(databases=_databases(options.get("databases", list(DATABASES))))


def _databases(value: Any) -> tuple[str, ...]:
    where = "package.databases"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: {value!r} is not a non-empty list of {', '.join(DATABASES)}")
    chosen = [choice(where, item, DATABASES) for item in value]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{where}: {value!r} names a database twice")
    return tuple(name for name in DATABASES if name in chosen)
