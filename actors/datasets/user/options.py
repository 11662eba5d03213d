"""The user dataset's options, declared once with their defaults: `user.detect_password_changes`, `user.source`."""

from __future__ import annotations

from typing import Any

from actors.options import Boolean, Choice, DatasetOptions, validate

SOURCES = ("files", "nss")


class UserOptions(DatasetOptions):
    """`detect_password_changes` and `source`."""

    # Detect password changes (a keyed digest of the shadow hash is kept, never the hash).
    detect_password_changes: Boolean = True
    # files: /etc/passwd, /etc/group, /etc/shadow under hostfs; nss: the agent's name service (LDAP, SSSD).
    source: Choice(*SOURCES) = "files"


def parse_options(raw: Any) -> UserOptions:
    """Read and check `user.*`; ConfigError naming the key, the value and what is allowed."""
    return validate(UserOptions, raw, "user")


SCHEMA = UserOptions  # what the dataset catalog hands the configuration
