"""The shared vocabulary of option values: the error a user can fix, durations (`500ms`, `1m`) and sizes
(`1GiB`). Used by the configuration loader and by datasets parsing their own options; imports nothing of
hostaudit."""

from __future__ import annotations

import math
import re


class ConfigError(Exception):
    """A configuration the user can fix. str() is one line naming the setting (or file) and the problem."""


# --- durations and sizes ------------------------------------------------------------------------------------

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+")
DURATION_HINT = "use e.g. 500ms, 1s, 1m, 12h"
# No duration may be longer than a year: a longer one is a typo (1e26h), and timers given it fail (the
# collector's timer thread died on OverflowError). A dataset's period and state.period must also be at least
# 10 ms: `period: 1ns` kept a collector polling flat out.
MAX_DURATION = 365 * 24 * 3600.0  # seconds
MIN_PERIOD = 0.01  # seconds


def show_duration(seconds: float) -> str:
    return "10ms" if seconds == MIN_PERIOD else "1 year (8760h)" if seconds == MAX_DURATION else f"{seconds:g}s"


def duration_seconds(value: str | int | float) -> float:
    """Seconds of a Go duration ("1h30m", "1.5s") or a bare number of seconds; may be zero or negative."""
    problem = ConfigError(f"{value!r} is not a duration ({DURATION_HINT})")
    if isinstance(value, bool):
        raise problem
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text[1:] if text[:1] in "+-" else text
        if re.fullmatch(_NUMBER, body):
            seconds = sign * float(body)
        elif _DURATION.fullmatch(body):
            seconds = sign * sum(float(number) * _DURATION_UNITS[unit]
                                 for number, unit in _DURATION_PART.findall(body))
        else:
            raise problem
    else:
        raise problem
    if not math.isfinite(seconds):
        raise problem
    if abs(seconds) > MAX_DURATION:
        raise ConfigError(f"{value!r} is longer than {show_duration(MAX_DURATION)}, the longest duration accepted")
    return seconds


def parse_duration(value: str | int | float) -> float:
    """Seconds of a duration: 500ms, 1s, 1m, 12h, 1h30m, 1.5s, or a bare number of seconds (90).

    Raises ConfigError for anything else and for zero or negative durations.
    """
    seconds = duration_seconds(value)
    if seconds <= 0:
        raise ConfigError(f"{value!r} is not a duration greater than 0 ({DURATION_HINT})")
    return seconds


_SIZE = re.compile(r"([0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)")
_SIZE_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _SIZE_UNITS.update({_letter: 1000**_power, f"{_letter}b": 1000**_power,
                        f"{_letter}i": 1024**_power, f"{_letter}ib": 1024**_power})


def parse_size(value: str | int) -> int:
    """Bytes of a size, go-humanize style: 1GiB, 100 MiB, 50MB, 1kb (1000), 1kib (1024), 1024 (bytes)."""
    problem = ConfigError(f"{value!r} is not a size (use e.g. 1GiB, 100 MiB, 50MB, 1024)")
    if isinstance(value, bool):
        raise problem
    if isinstance(value, int):
        if value < 0:
            raise problem
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise problem
        return int(value)
    if not isinstance(value, str):
        raise problem
    match = _SIZE.fullmatch(value.strip())
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise problem
    number, multiplier = match.group(1).replace(",", ""), _SIZE_UNITS[match.group(2).lower()]
    if "." in number:
        return int(float(number) * multiplier)
    return int(number) * multiplier


# --- checking a dataset's options ------------------------------------------------------------------------------


def check_known(where: str, raw: object, known: tuple[str, ...] | frozenset[str]) -> dict:
    """`raw` as a dict whose keys are all `known`; else ConfigError naming the first unknown key and the nearest
    known one (`process.backnd: unknown option (did you mean process.backend?)`)."""
    import difflib

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(sorted(known))}, got {raw!r}")
    for key in raw:
        if key not in known:
            nearest = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean {where}.{nearest[0]}?" if nearest else f"known: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}.{key}: unknown option ({hint})")
    return dict(raw)


def boolean(where: str, value: object) -> bool:
    """A YAML boolean, nothing else (a quoted "false" would be true in Python)."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: {value!r} is not true or false")


def choice(where: str, value: object, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive)."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
