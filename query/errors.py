"""The errors the query service answers with; the HTTP layer maps each family to one status."""

from __future__ import annotations


class BadRequest(ValueError):
    """The request itself is wrong (a malformed id, an unknown level, a refused query): 400."""


class NotFound(LookupError):
    """The request names something the store does not hold: 404."""


class Conflict(Exception):
    """The request is well formed but the state does not allow it (a job already finished, no
    live predictor matches): 409."""


class Busy(Exception):
    """The service already runs as many requests of this kind as it allows; retry soon: 429."""


class TooLarge(Exception):
    """The answer would hold more than the service returns at once (a trace past the span cap): 413."""
