"""Tracing levels: the depth of the HW/SW stack a run is traced at (see CONTRACT.md)."""

from __future__ import annotations

LEVELS: tuple[str, ...] = ("application", "model", "layer", "library", "hardware")
DEFAULT_LEVEL = "application"
LEVEL_ATTRIBUTE = "mlscope.level"


class UnknownLevel(ValueError):
    pass


def parse_level(text: str) -> str:
    """Returns the canonical level name for `text`, or raises UnknownLevel naming the choices."""
    level = text.strip().lower()
    if level not in LEVELS:
        raise UnknownLevel(f"unknown level {text!r}: expected one of {', '.join(LEVELS)}")
    return level


def levels_up_to(level: str) -> tuple[str, ...]:
    """Every level captured when tracing at `level` (application .. level inclusive)."""
    return LEVELS[: LEVELS.index(parse_level(level)) + 1]


def level_rank(level: str) -> int:
    """Depth of a level; an unknown level (from a foreign SDK) ranks as application."""
    try:
        return LEVELS.index(level)
    except ValueError:
        return 0
