"""The login dataset's options: `login.wtmp_file_pattern` and `login.btmp_file_pattern`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.options import ConfigError, check_known

DEFAULT_WTMP_PATTERN = "/var/log/wtmp*"
DEFAULT_BTMP_PATTERN = "/var/log/btmp*"


@dataclass(frozen=True)
class LoginOptions:
    """Glob patterns of the files to read, as paths on the host (read under `hostfs`); "" reads none."""

    wtmp_file_pattern: str = DEFAULT_WTMP_PATTERN
    btmp_file_pattern: str = DEFAULT_BTMP_PATTERN


def file_pattern(where: str, value: object) -> str:
    """An absolute glob pattern (`/var/log/wtmp*`), or "" for no file."""
    if isinstance(value, str) and (value == "" or (value.startswith("/") and "\0" not in value)):
        return value
    raise ConfigError(f"{where}: {value!r} is not an absolute path pattern (e.g. /var/log/wtmp*), "
                      "nor \"\" for no file")


def parse_options(raw: Any) -> LoginOptions:
    """Read and check `login.*`; ConfigError naming the key, the value and what is allowed."""
    options = check_known("login", raw, ("wtmp_file_pattern", "btmp_file_pattern"))
    return LoginOptions(
        wtmp_file_pattern=file_pattern("login.wtmp_file_pattern",
                                       options.get("wtmp_file_pattern", DEFAULT_WTMP_PATTERN)),
        btmp_file_pattern=file_pattern("login.btmp_file_pattern",
                                       options.get("btmp_file_pattern", DEFAULT_BTMP_PATTERN)),
    )
