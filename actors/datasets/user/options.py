"""The user dataset's options: `user.detect_password_changes` and `user.source`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.options import boolean, check_known, choice

SOURCES = ("files", "nss")


@dataclass(frozen=True)
class UserOptions:
    """`detect_password_changes` (default true) and `source` (files, the default, or nss)."""

    detect_password_changes: bool = True
    source: str = "files"


def parse_options(raw: Any) -> UserOptions:
    """Read and check `user.*`; ConfigError naming the key, the value and what is allowed."""
    options = check_known("user", raw, ("detect_password_changes", "source"))
    return UserOptions(
        detect_password_changes=boolean("user.detect_password_changes",
                                        options.get("detect_password_changes", True)),
        source=choice("user.source", options.get("source", "files"), SOURCES),
    )
