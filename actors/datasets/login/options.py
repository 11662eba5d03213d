"""The login dataset's options, declared once with their defaults: `login.wtmp_file_pattern`,
`login.btmp_file_pattern`."""

from __future__ import annotations

from typing import Annotated, Any

from actors.options import ConfigError, DatasetOptions, checked, validate

DEFAULT_WTMP_PATTERN = "/var/log/wtmp*"
DEFAULT_BTMP_PATTERN = "/var/log/btmp*"


def _file_pattern(value: Any) -> str:
    """An absolute glob pattern (`/var/log/wtmp*`), or "" for no file."""
    if isinstance(value, str) and (value == "" or (value.startswith("/") and "\0" not in value)):
        return value
    raise ConfigError(f"{value!r} is not an absolute path pattern (e.g. /var/log/wtmp*), nor \"\" for no file")


FilePattern = Annotated[str, checked(_file_pattern)]


class LoginOptions(DatasetOptions):
    """The dataset's options (`login.*` settings), defaults as Auditbeat's."""

    # Glob pattern of the wtmp files (logins, logouts, boots, shutdowns): paths on the host, read under
    # `hostfs`, rotated and compressed (gzip, bzip2, xz) ones included; "" reads none.
    wtmp_file_pattern: FilePattern = DEFAULT_WTMP_PATTERN
    # Glob pattern of the btmp files (failed logins); "" reads none.
    btmp_file_pattern: FilePattern = DEFAULT_BTMP_PATTERN


def parse_options(raw: Any) -> LoginOptions:
    """Read and check `login.*`; ConfigError naming the key, the value and what is allowed."""
    return validate(LoginOptions, raw, "login")


SCHEMA = LoginOptions  # what the dataset catalog hands the configuration
