"""What every mlscope HTTP port (the collector's OTLP/HTTP, the query API and viewer) does about
slow and numerous clients, and the log-line budget that keeps an attack from filling the disk.

    runner = listener_runner(app, limits, access_log=None)
    await runner.setup()
    await GuardedSite(runner, host, port, limits.max_connections).start()
    # and on the app, once its other middlewares are in: add_body_deadline(app, limits.body_timeout_s)

- Header timeout: a connection must deliver a whole request head within `header_timeout_s` of
  being accepted or of its previous response. aiohttp has no header-read timeout; its keep-alive
  timer is one, since it closes a connection still waiting for a complete head (idle keep-alive
  connections are closed after the same time).
- Body timeout: a request's body must have arrived `body_timeout_s` after the handler started,
  else the connection is closed and the handler sees `web.HTTPRequestTimeout`.
- Shutdown: a connection whose body is still arriving is closed at once; a handler still running
  `body_timeout_s` after the shutdown began is cancelled (aiohttp's shutdown_timeout), so that a
  slow client holds a stopping server for at most that long.
- Connection limit: beyond `max_connections` open connections on one port, a new one is answered
  503 and closed at once, so that a flood cannot take the file descriptors the other ports, the
  store and the spool need.
- Requests aiohttp cannot parse (a request line or header past its 8,190-byte limit, a bad method)
  are answered before any middleware sees them; GuardedSite answers them as JSON, as the app's
  other errors are (`PROTOCOL_ERROR_BODY` says how), quoting none of the input.

Pure of mlscope: imports aiohttp only, so any component may use it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

# A fixed answer for connections past the limit: no parsing, no handler, no log line.
_TURNED_AWAY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections; retry soon"
)


def default_max_connections() -> int:
    """A quarter of the process's file-descriptor limit per port (serve runs three), between 64
    and 4,096: the rest stays for the store, the spool and the other ports."""
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY:
        return 4_096
    return max(64, min(4_096, soft_limit // 4))


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout_s: float = 10.0  # to receive a request's head (and the longest idle keep-alive)
    body_timeout_s: float = 30.0  # to receive a request's body once its handler has started
    max_connections: int = field(default_factory=default_max_connections)  # per port
    log_lines_per_minute: int = 20  # per code location that logs (rate_limit_logs)


def listener_runner(app: web.Application, limits: ListenerLimits, **runner_args: Any) -> web.AppRunner:
    """An AppRunner whose connections time out waiting for a request head, and whose cleanup
    waits for running handlers at most `body_timeout_s` (module docstring)."""
    return web.AppRunner(app, keepalive_timeout=limits.header_timeout_s, shutdown_timeout=limits.body_timeout_s,
                         **runner_args)


ProtocolErrorBody = Callable[[int, str], dict[str, Any]]
"""(HTTP status, what was wrong) -> the JSON body of an answer to a request that could not be parsed."""
PROTOCOL_ERROR_BODY: web.AppKey[ProtocolErrorBody] = web.AppKey("protocol_error_body")
"""Set on an app whose errors have another shape than `{"error": ...}` (OTLP's google.rpc.Status)."""


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


def _protocol_error_message(status: int, exc: BaseException | None) -> str:
    """What was wrong, in words of ours: aiohttp's own message quotes the input."""
    if isinstance(exc, LineTooLong):
        return "a request line or header line is longer than this server reads"
    if isinstance(exc, HttpProcessingError):
        return "the request is not valid HTTP/1.1"
    if status >= 500:
        return "internal error"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "bad request"


class _JsonProtocolErrors(web.RequestHandler):
    """aiohttp's connection handler, answering what it cannot hand to the app (a request it
    cannot parse; a handler's uncaught error where the app has no middleware for it) as JSON in
    the app's error shape, instead of plain text quoting up to 100 bytes of the input."""

    __slots__ = ("_error_body",)

    def __init__(self, manager: web.Server, error_body: ProtocolErrorBody, **handler_args: Any) -> None:
        super().__init__(manager, **handler_args)
        self._error_body = error_body

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if an answer was begun
        body = self._error_body(status, _protocol_error_message(status, exc))
        response = web.Response(status=status, text=json.dumps(body), content_type="application/json")
        response.force_close()
        return response


class _TurnAway(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_TURNED_AWAY)
        transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site of `runner` that turns away connections past `max_connections` (a 503, closed)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, max_connections: int) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # the runner is set up before a site starts
        if len(server.connections) >= self._max_connections:
            return _TurnAway()
        # What server() makes, with its arguments (aiohttp keeps them in Server._kwargs; no public
        # hook reaches the answer to a request that could not be parsed).
        return _JsonProtocolErrors(server, self._error_body, loop=asyncio.get_running_loop(), **server._kwargs)

    async def start(self) -> None:
        await super().start()
        app = self._runner.app if isinstance(self._runner, web.AppRunner) else None
        self._error_body = app.get(PROTOCOL_ERROR_BODY, error_body) if app is not None else error_body
        self._server = await asyncio.get_running_loop().create_server(self._protocol, self._host, self._port)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_body_deadline(app: web.Application, timeout_s: float) -> None:
    """Puts on `app`, as its last middleware (nearest the handler), a deadline for request bodies:
    a connection whose body is still arriving `timeout_s` after its handler started is closed; the
    handler's read then raises, and the request ends as `web.HTTPRequestTimeout` (the answer cannot
    reach the closed connection, but the handler's error path and logs see a timeout, not a crash).
    On the app's shutdown such connections are closed at once (503 for the handler): nothing of
    their requests was acknowledged, and waiting for their bodies would hold the shutdown."""
    # By id(request) (a Request is not hashable); both touched on the app's loop only.
    receiving: dict[int, web.Request] = {}  # requests in their handlers
    cut_at_shutdown: set[int] = set()  # of those, the ones whose bodies the shutdown cut

    def cut(request: web.Request) -> bool:
        """Closes the request's connection if its body is still arriving; whether it did."""
        if request.content.is_eof() or request.transport is None:
            return False
        request.transport.close()
        return True

    @web.middleware
    async def within_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        expired = False

        def close_if_body_unfinished() -> None:
            nonlocal expired
            expired = cut(request)

        timer = asyncio.get_running_loop().call_later(timeout_s, close_if_body_unfinished)
        receiving[id(request)] = request
        try:
            return await handler(request)
        except Exception:
            if expired:
                raise web.HTTPRequestTimeout(text=f"request body not received within {timeout_s:g} s") from None
            if id(request) in cut_at_shutdown:
                raise web.HTTPServiceUnavailable(text="the server is stopping") from None
            raise
        finally:
            timer.cancel()
            del receiving[id(request)]
            cut_at_shutdown.discard(id(request))

    async def cut_unfinished_bodies(app: web.Application) -> None:
        cut_at_shutdown.update(key for key, request in list(receiving.items()) if cut(request))

    app.middlewares.append(within_deadline)
    app.on_shutdown.append(cut_unfinished_bodies)


# --- log lines ----------------------------------------------------------------------------------


@dataclass
class _OriginCount:
    interval_start: float
    passed: int = 0
    suppressed: int = 0


class LineBudget:
    """How many lines from one origin (a code location) pass per interval: the first
    `lines_per_interval`, then none until the interval ends. Pure: the caller gives the time."""

    def __init__(self, lines_per_interval: int, interval_s: float) -> None:
        self.lines_per_interval = lines_per_interval
        self.interval_s = interval_s
        # One entry per code location that logs: bounded by the code, not by the traffic.
        self._origins: dict[tuple[str, int], _OriginCount] = {}

    def admit(self, origin: tuple[str, int], now: float) -> int | None:
        """None: drop this line. Otherwise it passes, and the number is how many lines from
        `origin` were dropped since the last one that passed (0 mostly)."""
        count = self._origins.get(origin)
        if count is None or now - count.interval_start >= self.interval_s:
            suppressed = count.suppressed if count else 0
            count = self._origins[origin] = _OriginCount(interval_start=now)
        else:
            suppressed = 0
        if count.passed >= self.lines_per_interval:
            count.suppressed += 1
            return None
        count.passed += 1
        # A drop counted in this interval is reported by the next interval's first line.
        return suppressed


class RateLimitFilter(logging.Filter):
    """A handler filter: at most `lines_per_interval` lines per code location per interval; the
    first line after a suppression says how many lines were left out."""

    def __init__(self, lines_per_interval: int = 20, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._budget = LineBudget(lines_per_interval, interval_s)
        self._clock = clock
        self._lock = threading.Lock()  # worker threads log too

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            suppressed = self._budget.admit((record.pathname, record.lineno), self._clock())
        if suppressed is None:
            return False
        if suppressed:
            record.msg = (f"{record.getMessage()} [suppressed {suppressed} lines from here in the last "
                          f"{self._budget.interval_s:g} s]")
            record.args = ()
        return True


def rate_limit_logs(lines_per_minute: int = ListenerLimits.log_lines_per_minute) -> None:
    """Puts a RateLimitFilter of `lines_per_minute` per code location on each of the root logger's
    handlers (or on logging's last-resort handler, which prints when none is configured), once."""
    handlers = logging.getLogger().handlers or [logging.lastResort]
    for handler in handlers:
        if handler is not None and not any(isinstance(kind, RateLimitFilter) for kind in handler.filters):
            handler.addFilter(RateLimitFilter(lines_per_minute, 60.0))
