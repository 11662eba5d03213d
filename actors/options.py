"""The shared vocabulary of option values: the error a user can fix, durations (`500ms`, `1m`), sizes
(`1GiB`), and the pydantic types and base model every settings schema is declared with (the framework's in
`actors/config/schema.py`, each dataset's in its `options.py`). Imports nothing of hostaudit."""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Callable, Mapping, NoReturn, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError


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


# --- the types settings schemas are declared with ----------------------------------------------------------
#
# Each type checks and converts one value and, when it is wrong, says what is wrong in the project's words
# ("'foo' is not one of auto, netlink, procfs"); `validate` turns the first error into one ConfigError line
# naming the key. Values pydantic would coerce silently (a quoted "1" for a bool, 1.5 for an int) are refused.

SECRET_WORDS = ("password", "passphrase", "secret", "token", "api_key")
NOT_SECRETS = frozenset({"detect_password_changes"})  # a switch, not a secret
REDACTED = "[redacted]"


def is_secret_key(key: str) -> bool:
    """True for setting names whose values are secrets (password, key_passphrase, *secret*, *token*), except the
    switches that only mention one (`detect_password_changes`)."""
    lowered = str(key).lower()
    return any(word in lowered for word in SECRET_WORDS) and lowered.rsplit(".", 1)[-1] not in NOT_SECRETS


def show(key: str, value: Any) -> str:
    """The value as it may appear in an error message: quoted, shortened, never a secret."""
    if is_secret_key(key.rsplit(".", 1)[-1]) or type(value).__name__ == "Secret":
        return REDACTED
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problem(text: str) -> PydanticCustomError:
    """The error a value check raises: `text` becomes the message after `<key>: `."""
    return PydanticCustomError("hostaudit", "{problem}", {"problem": text})


def checked(check: Callable[[Any], Any]) -> BeforeValidator:
    """A pydantic validator running `check`, whose ConfigError (a message without the key) becomes `problem`."""

    def run(value: Any) -> Any:
        try:
            return check(value)
        except _ItemError as error:
            raise PydanticCustomError("hostaudit_item", "[{index}]: {problem}",
                                      {"index": error.index, "problem": str(error)}) from None
        except ConfigError as error:
            raise problem(str(error)) from None

    return BeforeValidator(run)


class _ItemError(ConfigError):
    """A problem with item `index` of a list value (the key becomes `<key>[index]`)."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(text)
        self.index = index


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{value!r} is not true or false")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None or value == "" else check(value)


def _text(allow_empty: bool) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{value!r} is not a string")
        if not allow_empty and not value.strip():
            raise ConfigError("must not be empty")
        return value
    return check


def _text_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"must be a list of strings, not {value!r}")
    items = []
    for index, item in enumerate(value):
        try:
            items.append(_text(False)(item))
        except ConfigError as error:
            raise _ItemError(index, str(error)) from None
    return tuple(items)


def _whole(minimum: int | None, maximum: int | None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{value!r} is not a whole number")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None
                      else f"at least {minimum}" if minimum is not None else f"at most {maximum}")
            raise ConfigError(f"{value} is out of range (must be {bounds})")
        return value
    return check


def _choice(choices: tuple[str, ...], upper: bool) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str):
            text = value.strip().upper() if upper else value.strip().lower()
            if text in choices:
                return text
        raise ConfigError(f"{value!r} is not one of {', '.join(choices)}")
    return check


def _duration(allow_zero: bool, minimum: float | None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        seconds = duration_seconds(value)
        if seconds < 0 or seconds == 0 and not allow_zero:
            raise ConfigError(f"{value!r} must be {'0 or more' if allow_zero else 'greater than 0'} "
                              f"({DURATION_HINT})")
        if minimum is not None and seconds < minimum:
            raise ConfigError(f"{value!r} is shorter than {show_duration(minimum)}, the shortest accepted here")
        return seconds
    return check


def _size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ConfigError(f"{value!r} must be greater than 0")
    return size


Boolean = Annotated[bool, checked(_boolean)]
OptionalBoolean = Annotated[bool | None, checked(lambda value: None if value is None else _boolean(value))]
Text = Annotated[str, checked(_text(True))]
NonEmptyText = Annotated[str, checked(_text(False))]
OptionalText = Annotated[str | None, checked(_optional(_text(True)))]
TextList = Annotated[tuple[str, ...], checked(_text_list)]
Size = Annotated[int, checked(_size)]  # bytes, > 0
Period = Annotated[float, checked(_duration(False, MIN_PERIOD))]  # a dataset's period: 10ms .. a year


def Whole(minimum: int | None = None, maximum: int | None = None) -> Any:
    """A whole number (a numeric string is read as one), within the bounds."""
    return Annotated[int, checked(_whole(minimum, maximum))]


def Choice(*choices: str, upper: bool = False) -> Any:
    """One of `choices`, case-insensitive (given lower case, or upper case with `upper`)."""
    return Annotated[str, checked(_choice(choices, upper))]


def Duration(allow_zero: bool = False, optional: bool = False) -> Any:
    """Seconds of a Go duration (`500ms`, `1m`) or bare number, > 0 (>= 0 with `allow_zero`), at most a year;
    `optional`: null (or "") is None."""
    check = _duration(allow_zero, None)
    return Annotated[float | None, checked(_optional(check))] if optional else Annotated[float, checked(check)]


class Schema(BaseModel):
    """Base of every settings model: unknown keys refused, read-only, defaults checked like given values."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, arbitrary_types_allowed=True,
                              hide_input_in_errors=True)


class DatasetOptions(Schema):
    """Base of a dataset's options (`<dataset>.*`): the defaults are declared here, in its `options.py`."""


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def _loc_text(where: str, loc: tuple[Any, ...]) -> str:
    text = where
    for part in loc:
        text = f"{text}[{part}]" if isinstance(part, int) else (f"{text}.{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class holding the last key of `loc` (for suggesting a near known key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(argument)
        if found is not None:
            return found
    return None


def unknown_key(key: str, name: str, known: Any) -> str:
    """`<key>: unknown setting`, with the nearest known name, or the known names when there are few."""
    known = [str(each) for each in known]
    nearest = difflib.get_close_matches(str(name), known, n=1)
    if nearest:
        return f"{key}: unknown setting (did you mean {nearest[0]}?)"
    if len(known) <= 8:
        return f"{key}: unknown setting (known: {', '.join(sorted(known)) or 'none'})"
    return f"{key}: unknown setting"


def describe(error: ValidationError, model: type[BaseModel], where: str, value_of: Callable[[tuple], Any]
             ) -> str:
    """One line for the first error of a validation: `<key>: <what is wrong>`."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    key = _loc_text(where, loc)
    kind = first["type"]
    if kind == "hostaudit":
        return f"{key}: {first['ctx']['problem']}"
    if kind == "hostaudit_item":
        return f"{key}[{first['ctx']['index']}]: {first['ctx']['problem']}"
    if kind == "extra_forbidden":
        holder = _model_at(model, loc[:-1])
        return unknown_key(key, loc[-1], holder.model_fields if holder else ())
    if kind == "missing":
        return f"{key}: required"
    value = value_of(loc)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{key}: must be a map of settings, not {show(key, value)}"
    return f"{key}: {show(key, value)}: {first['msg']}"


def _value_at(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def validate(model: type[SchemaT], raw: Any, where: str = "") -> SchemaT:
    """`raw` (a mapping, None = empty) checked and converted by `model`; ConfigError naming the first wrong key
    (prefixed by `where`), its value and what is allowed."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'settings'}: must be a map of settings, not {show(where, raw)}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(describe(error, model, where, lambda loc: _value_at(raw, loc))) from None


def fail(key: str, text: str) -> NoReturn:
    """Raise the one-line error for a setting: `<key>: <text>`."""
    raise ConfigError(f"{key}: {text}")
