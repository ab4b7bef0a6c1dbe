"""How the service answers over HTTP, shared by the query API and what is mounted beside it
(mlscope.dispatch): JSON bodies, one middleware that turns every error into `{"error": ...}`
with its status code, one that checks each route's scope (mlscope.auth), and `Mount`, a
component's routes served next to the query API.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mlscope.auth import AuthPolicy, Verdict, route_scope
from mlscope.conventions import UnknownLevel
from mlscope.store import StoreUnavailable

from .errors import BadRequest, Busy, Conflict, NotFound, TooLarge
from .params import single

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
_ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (BadRequest, 400),
    (UnknownLevel, 400),
    (StoreUnavailable, 503),
    (Busy, 429),
    (TooLarge, 413),
)
# How long a client told 429 waits before it retries.
_RETRY_AFTER = {"Retry-After": "1"}

_VERDICT_STATUS = {Verdict.UNAUTHENTICATED: 401, Verdict.FORBIDDEN: 403}
# RFC 6750: a 401 names the scheme the client should use.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mlscope"'}

_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}

_dumps = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Mount:
    """A component served beside the query API: its app, mounted at `prefix`, and its part of
    /openapi.json (`paths` under their full path, `schemas` it refers to)."""

    prefix: str
    app: web.Application
    paths: Mapping[str, Any]
    schemas: Mapping[str, Any]


def json_response(data: Any, **kwargs: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps, **kwargs)


def error_response(
    http_status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response({"error": message, **extra}, status=http_status, headers=headers)


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body must be JSON: {exc}") from exc


def flag(request: web.Request, name: str) -> bool:
    """A 0/1 query parameter; absent is 0; BadRequest when given more than once."""
    text = single(request.query, name).lower()
    if text not in _FLAGS:
        raise BadRequest(f"{name} must be 0 or 1, not {text[:16]!r}")
    return _FLAGS[text]


def _status_of(exc: Exception) -> int | None:
    return next((status for kind, status in _ERROR_STATUS if isinstance(exc, kind)), None)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception as exc:
        status = _status_of(exc)
        if status is None:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error")
        return error_response(status, str(exc), headers=_RETRY_AFTER if status == 429 else None)


Middleware = Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]]


def authorize(policy: AuthPolicy) -> Middleware:
    """A middleware that answers 401/403 unless the request's bearer token has the scope its
    route declares (`mlscope.auth.requires` / `public`; sub-apps' routes included). A path no
    route matches goes on to its 404 or 405."""

    @web.middleware
    async def check_scope(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            scope = route_scope(request.match_info.handler)
            if scope is not None:
                verdict = policy.check(request.headers.get("Authorization"), scope)
                if verdict is Verdict.UNAUTHENTICATED:
                    return error_response(401, "a bearer token is required (Authorization: Bearer <token>)",
                                          headers=_CHALLENGE)
                if verdict is Verdict.FORBIDDEN:
                    return error_response(403, f"this token lacks the {scope.value} scope")
        return await handler(request)

    return check_scope
