"""Query-string parameters -> a filter's typed fields, by one rule for every listing route
(traces, evaluations, jobs): an empty parameter counts as absent, an unknown one is ignored, and
a bad one is a BadRequest that names it and says what it must be. A parameter given more than
once is a BadRequest too, known or not (which of its values was meant cannot be told), unless the
route declares it repeatable (`attr`).

    TraceFilter(**parse_params(request.query, {"service": text, "limit": int_between(1, 1000)}))

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .errors import BadRequest

ParseParam = Callable[[str, str], Any]
"""(parameter name, its non-empty text) -> the field's value; BadRequest when the text is bad."""

_SHOWN = 64  # characters of a bad value quoted back in the error
# The largest number a filter compares with: the store's times, durations and counts are UInt64.
MAX_NUMBER = 2**64 - 1


def parse_params(params: Mapping[str, str], fields: Mapping[str, ParseParam],
                 repeatable: Collection[str] = ()) -> dict[str, Any]:
    """The fields present (non-empty) in `params`, each parsed by its function; BadRequest when
    any parameter but the `repeatable` ones is given more than once (`params` a MultiDict, as
    aiohttp's request.query is, or a plain mapping, which cannot repeat one)."""
    check_single(params, repeatable)
    return {name: parse(name, params[name]) for name, parse in fields.items() if params.get(name)}


def check_single(params: Mapping[str, str], repeatable: Collection[str] = ()) -> None:
    """BadRequest naming the first parameter of `params` given more than once, `repeatable` ones aside."""
    for name, count in Counter(name for name, _ in params.items()).items():
        if count > 1 and name not in repeatable:
            raise BadRequest(f"parameter {name[:_SHOWN]!r} is given {count} times; give it once")


def single(params: Mapping[str, str], name: str) -> str:
    """The value of parameter `name` ('' when absent); BadRequest when it is given more than once."""
    getall = getattr(params, "getall", None)
    values = getall(name, []) if getall is not None else [params[name]] if name in params else []
    if len(values) > 1:
        raise BadRequest(f"parameter {name[:_SHOWN]!r} is given {len(values)} times; give it once")
    return values[0] if values else ""


def text(name: str, value: str) -> str:
    """Any text, matched exactly."""
    return value


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value[:_SHOWN]!r}") from None


def natural(name: str, value: str) -> int:
    """A non-negative integer the store can compare with (at most MAX_NUMBER)."""
    number = _integer(name, value)
    if number < 0:
        raise BadRequest(f"{name} must not be negative")
    if number > MAX_NUMBER:
        raise BadRequest(f"{name} must be at most {MAX_NUMBER}, not {value[:_SHOWN]!r}")
    return number


def zero_or_one(name: str, value: str) -> int:
    """A yes/no filter: 0 or 1, nothing else."""
    if value not in ("0", "1"):
        raise BadRequest(f"{name} must be 0 or 1, not {value[:_SHOWN]!r}")
    return int(value)


def int_between(low: int, high: int) -> ParseParam:
    """An integer from `low` to `high`, both included."""

    def parse(name: str, value: str) -> int:
        number = _integer(name, value)
        if not low <= number <= high:
            raise BadRequest(f"{name} must be between {low} and {high}, not {value[:_SHOWN]!r}")
        return number

    return parse


def one_of(choices: Sequence[str]) -> ParseParam:
    """One of `choices`, exactly."""

    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}, not {value[:_SHOWN]!r}")
        return value

    return parse


def matching(pattern: re.Pattern[str], description: str) -> ParseParam:
    """Text that `pattern` matches whole; `description` says what that is (for the error)."""

    def parse(name: str, value: str) -> str:
        if not pattern.fullmatch(value):
            raise BadRequest(f"{name} must be {description}")
        return value

    return parse
