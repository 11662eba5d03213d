"""Values that must not leak or change: `Secret` (prints as [redacted]), read-only settings containers, and
the walk that wraps every secret-named value of a settings tree."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Mapping, NoReturn

from actors.options import REDACTED, is_secret_key


class Secret:
    """A secret setting (a password, a passphrase). Prints, formats and exports as `[redacted]`.

    The real value is only available through `reveal()`, e.g. the Kafka output does
    `options["password"].reveal()`. Not a `str`, so it cannot be passed on by mistake as the password itself.
    Pickles with its value (the supervisor hands settings to its child processes).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(REDACTED, spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


class FrozenDict(dict):
    """A dict that refuses changes: settings are read-only. Still a dict for json, `**` and pickling."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("settings are read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def plain(value: Any, reveal: bool = False) -> Any:
    """Nested dicts/lists of YAML-safe scalars; secrets as `[redacted]` unless `reveal`."""
    if isinstance(value, Mapping):
        return {str(key): plain(item, reveal) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, reveal) for item in value]
    if isinstance(value, Secret):
        return value.reveal() if reveal else REDACTED
    if isinstance(value, Path):
        return str(value)
    return value


def protect_secrets(value: Any, secret: bool = False) -> Any:
    if isinstance(value, dict):
        return {key: protect_secrets(item, secret or is_secret_key(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [protect_secrets(item, secret) for item in value]
    if secret and value is not None and value != "" and not isinstance(value, (Secret, bool)):
        return Secret(str(value))
    return value
