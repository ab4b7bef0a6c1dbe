"""The query service's HTTP API: route table first, thin handlers (parse, call, render), and one
middleware that turns every error into a JSON `{"error": ...}` with its status code.

Store calls block, so they run in worker threads (asyncio.to_thread) and never stall the loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mlscope.conventions import UnknownLevel, parse_levels
from mlscope.store import Store, StoreError, StoreUnavailable
from mlscope.ui import add_viewer

from .dispatch import DispatchTiming, Dispatcher, parse_heartbeat, parse_job_filter, parse_state_change
from .errors import BadRequest, Conflict, NotFound
from .export import EXPORTERS
from .evaluations import parse_evaluation_filter
from .listing import parse_trace_filter
from .openapi import openapi_document
from .reader import SqlLimits, TraceReader
from .timeline import Timeline, build_timeline, timeline_json

CollectorStatus = Callable[[], dict[str, Any]]

# SQL text and nothing else is posted here; a bigger body is a mistake or an attack.
MAX_BODY_BYTES = 1 * 2**20

log = logging.getLogger(__name__)


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/openapi.json", openapi),
        web.get("/api/traces", list_traces),
        web.get("/api/traces/{trace_id}", get_trace),
        web.get("/api/traces/{trace_id}/export", export_trace),
        web.post("/api/sql", run_sql),
        web.get("/api/evaluations", list_evaluations),
        web.post("/api/predictors", predictor_heartbeat),
        web.get("/api/predictors", list_predictors),
        web.post("/api/jobs", submit_jobs),
        web.get("/api/jobs", list_jobs),
        web.get("/api/jobs/{job_id}", get_job),
        web.post("/api/jobs/{job_id}/state", change_job_state),
    ]


# Most specific first: the first class an error is an instance of decides its status.
_ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (BadRequest, 400),
    (UnknownLevel, 400),
    (StoreUnavailable, 503),
)

READER = web.AppKey("reader", TraceReader)
STORE = web.AppKey("store", Store)
COLLECTOR_STATUS: web.AppKey[CollectorStatus | None] = web.AppKey("collector_status")
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
OTLP_HTTP_PORT: web.AppKey[int | None] = web.AppKey("otlp_http_port")

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}

_dumps = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False)


def create_query_app(
    store: Store, collector_status: CollectorStatus | None = None, *, sql_limits: SqlLimits = SqlLimits(),
    dispatch_timing: DispatchTiming = DispatchTiming(), otlp_http_port: int | None = None,
) -> web.Application:
    """The query API and the viewer over `store`; `collector_status`, when given, is reported
    by /readyz (a collector running in the same process), and `otlp_http_port` (that collector's
    port) is told to predictors so that their results reach it."""
    app = web.Application(middlewares=[_errors_as_json], client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[READER] = TraceReader(store, sql_limits)
    app[COLLECTOR_STATUS] = collector_status
    app[DISPATCHER] = Dispatcher(store, dispatch_timing)
    app[OTLP_HTTP_PORT] = otlp_http_port
    app.add_routes(_routes())
    add_viewer(app)
    return app


# --- errors -----------------------------------------------------------------------------------


def _error(http_status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=http_status, dumps=_dumps)


def _status_of(exc: Exception) -> int | None:
    return next((status for kind, status in _ERROR_STATUS if isinstance(exc, kind)), None)


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception as exc:
        status = _status_of(exc)
        if status is None:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal error")
        return _error(status, str(exc))


# --- request parsing --------------------------------------------------------------------------


def _trace_id(request: web.Request) -> str:
    text = request.match_info["trace_id"]
    if not _TRACE_ID.fullmatch(text):
        raise BadRequest(f"trace id must be 32 hex digits, not {text[:64]!r}")
    return text.lower()


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "").lower()
    if text not in _FLAGS:
        raise BadRequest(f"{name} must be 0 or 1, not {text[:16]!r}")
    return _FLAGS[text]


async def _timeline(
    request: web.Request, trace_id: str, levels: frozenset[str] | None = None, raw: bool = False
) -> Timeline:
    spans = await asyncio.to_thread(request.app[READER].trace_spans, trace_id)
    if not spans:
        raise NotFound(f"trace {trace_id} not found")
    return build_timeline(trace_id, spans, levels=levels, raw=raw)


def _json_response(data: Any, **kwargs: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps, **kwargs)


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    status = request.app[COLLECTOR_STATUS]
    extra = {"store": store.url, **({"collector": status()} if status else {})}
    try:
        await asyncio.to_thread(store.ping)
    except StoreError as exc:
        return _error(503, f"store unavailable: {exc}", status="unavailable", **extra)
    return _json_response({"status": "ready", **extra})


async def openapi(request: web.Request) -> web.Response:
    return _json_response(openapi_document())


async def list_traces(request: web.Request) -> web.Response:
    trace_filter = parse_trace_filter(request.query)
    traces = await asyncio.to_thread(request.app[READER].list_traces, trace_filter)
    return _json_response({"traces": traces})


async def get_trace(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    levels = parse_levels(request.query.get("levels"))
    timeline = await _timeline(request, trace_id, levels=levels, raw=_flag(request, "raw"))
    return _json_response(timeline_json(timeline))


async def export_trace(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    name = request.query.get("format", "")
    exporter = EXPORTERS.get(name)
    if exporter is None:
        raise BadRequest(f"format must be one of {', '.join(sorted(EXPORTERS))}, not {name[:32]!r}")
    timeline = await _timeline(request, trace_id)
    disposition = f'attachment; filename="trace-{timeline.trace_id}.{name}.json"'
    return _json_response(exporter(timeline), headers={"Content-Disposition": disposition})


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body must be JSON: {exc}") from exc


async def run_sql(request: web.Request) -> web.Response:
    body = await _json_body(request)
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str):
        raise BadRequest('the body must be {"query": "<SQL>"}')
    answer = await asyncio.to_thread(request.app[READER].run_sql, query)
    return _json_response({
        "columns": [{"name": name, "type": ch_type} for name, ch_type in answer.columns],
        "rows": answer.rows,
        "truncated": answer.truncated,
    })


async def list_evaluations(request: web.Request) -> web.Response:
    evaluation_filter = parse_evaluation_filter(request.query)
    rows = await asyncio.to_thread(request.app[READER].evaluations, evaluation_filter)
    return _json_response({"evaluations": rows})


async def predictor_heartbeat(request: web.Request) -> web.Response:
    heartbeat = parse_heartbeat(await _json_body(request))
    answer = await asyncio.to_thread(request.app[DISPATCHER].heartbeat, heartbeat)
    port = request.app[OTLP_HTTP_PORT]
    return _json_response({**answer, **({"otlp_http_port": port} if port else {})})


async def list_predictors(request: web.Request) -> web.Response:
    predictors = await asyncio.to_thread(request.app[DISPATCHER].predictors)
    if _flag(request, "alive"):
        predictors = [predictor for predictor in predictors if predictor["alive"]]
    return _json_response({"predictors": predictors})


async def submit_jobs(request: web.Request) -> web.Response:
    # Imported here: the evaluation package is only needed by this route (~0.2 s to import).
    from mlscope.evaluation.jobs import JobError, parse_job_request

    try:
        job_request = parse_job_request(await _json_body(request))
    except JobError as exc:
        raise BadRequest(str(exc)) from exc
    plan = job_request.plan
    needs = [f"{framework}/{plan.execution_provider}" for framework in plan.frameworks]
    answer = await asyncio.to_thread(request.app[DISPATCHER].submit, job_request.to_json(), job_request.where, needs)
    return _json_response(answer, status=201)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = await asyncio.to_thread(request.app[DISPATCHER].jobs, parse_job_filter(request.query))
    return _json_response({"jobs": jobs})


async def get_job(request: web.Request) -> web.Response:
    return _json_response(await asyncio.to_thread(request.app[DISPATCHER].job, request.match_info["job_id"]))


async def change_job_state(request: web.Request) -> web.Response:
    change = parse_state_change(await _json_body(request))
    job = await asyncio.to_thread(request.app[DISPATCHER].change_state, request.match_info["job_id"], change)
    return _json_response(job)
