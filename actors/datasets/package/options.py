"""The package dataset's options, declared once with their defaults: `package.databases`."""

from __future__ import annotations

from typing import Annotated, Any

from actors.options import ConfigError, DatasetOptions, checked, validate

DATABASES = ("dpkg", "rpm", "apk")


def _databases(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{value!r} is not a non-empty list of {', '.join(DATABASES)}")
    chosen = [item.strip().lower() if isinstance(item, str) else item for item in value]
    if unknown := [item for item in chosen if item not in DATABASES]:
        raise ConfigError(f"{unknown[0]!r} is not one of {', '.join(DATABASES)}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{value!r} names a database twice")
    return tuple(name for name in DATABASES if name in chosen)


class PackageOptions(DatasetOptions):
    """`databases`: the package databases to read."""

    # Each is read only when it exists under hostfs: dpkg (/var/lib/dpkg/status, updates/, info/*.list), rpm
    # (rpmdb.sqlite in /usr/lib/sysimage/rpm or /var/lib/rpm; the old Berkeley DB and NDB formats are not
    # read, with a warning) and apk (/lib/apk/db/installed). A database is read again only when one of its
    # files changed (device, inode, size, mtime, ctime), so a short period costs little.
    databases: Annotated[tuple[str, ...], checked(_databases)] = DATABASES


def parse_options(raw: Any) -> PackageOptions:
    """Read and check `package.*`; ConfigError naming the key, the value and what is allowed."""
    return validate(PackageOptions, raw, "package")


SCHEMA = PackageOptions  # what the dataset catalog hands the configuration
