"""Dispatch over HTTP: an aiohttp app mounted at /api beside the query API (`dispatch_mount`),
route table first, thin handlers (parse with core, call the Dispatcher in a worker thread,
render). Errors answer as the query API's do (query/http.py), and so does auth: the query app's
middleware checks the scope each route declares here. A predictor's token (`predictor` scope)
beats, pulls its jobs and changes their state, for the predictors it registered only (core's
NotYours, 403); submitting jobs and listing predictors is `admin`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from mlscope.auth import Caller, Scope, requires
from mlscope.query.api import AUTH
from mlscope.query.http import Mount, error_response, errors_as_json, flag, json_body, json_response

from .core import NotYours, check_id, parse_heartbeat, parse_job_filter, parse_state_change, parse_submission
from .dispatcher import Dispatcher
from .openapi import PATHS, SCHEMAS

PREFIX = "/api"


def _routes() -> list[web.RouteDef]:
    return [
        web.post("/predictors", predictor_heartbeat),
        web.get("/predictors", list_predictors),
        web.post("/jobs", submit_jobs),
        web.get("/jobs", list_jobs),
        web.get("/jobs/{job_id}", get_job),
        web.post("/jobs/{job_id}/state", change_job_state),
    ]


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
OTLP_HTTP_PORT: web.AppKey[int | None] = web.AppKey("otlp_http_port")


def dispatch_mount(dispatcher: Dispatcher, otlp_http_port: int | None = None) -> Mount:
    """Dispatch's routes, to serve beside the query API (`create_query_app(..., mounts=[...])`);
    `otlp_http_port`, the port of a collector in the same process, is told to predictors so that
    their results reach it."""
    app = web.Application(middlewares=[errors_as_json, not_yours_as_403])
    app[DISPATCHER] = dispatcher
    app[OTLP_HTTP_PORT] = otlp_http_port
    app.add_routes(_routes())
    return Mount(PREFIX, app, PATHS, SCHEMAS)


@web.middleware
async def not_yours_as_403(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # The query API's error families have no 403 (its auth middleware answers those itself).
    try:
        return await handler(request)
    except NotYours as exc:
        return error_response(403, str(exc))


def _job_id(request: web.Request) -> str:
    return check_id(request.match_info["job_id"], "job id")


def _caller(request: web.Request) -> Caller:
    """Who sent the request, by the policy of the query app this one is mounted in."""
    return request.config_dict[AUTH].caller(request.headers.get("Authorization"))


@requires(Scope.PREDICTOR)
async def predictor_heartbeat(request: web.Request) -> web.Response:
    heartbeat = parse_heartbeat(await json_body(request))
    answer = await asyncio.to_thread(request.app[DISPATCHER].heartbeat, heartbeat, _caller(request))
    port = request.app[OTLP_HTTP_PORT]
    return json_response({**answer, **({"otlp_http_port": port} if port else {})})


@requires(Scope.ADMIN)
async def list_predictors(request: web.Request) -> web.Response:
    alive_only = flag(request, "alive")
    predictors = await asyncio.to_thread(request.app[DISPATCHER].predictors)
    return json_response({"predictors": [predictor for predictor in predictors if predictor["alive"] or not alive_only]})


@requires(Scope.ADMIN)
async def submit_jobs(request: web.Request) -> web.Response:
    # Parsing runs the manifests' YAML: in a worker thread, never on the loop the collector shares.
    submission = await asyncio.to_thread(parse_submission, await json_body(request))
    return json_response(await asyncio.to_thread(request.app[DISPATCHER].submit, submission), status=201)


@requires(Scope.PREDICTOR)
async def list_jobs(request: web.Request) -> web.Response:
    job_filter = parse_job_filter(request.query)
    return json_response({"jobs": await asyncio.to_thread(request.app[DISPATCHER].jobs, job_filter, _caller(request))})


@requires(Scope.PREDICTOR)
async def get_job(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[DISPATCHER].job, _job_id(request), _caller(request)))


@requires(Scope.PREDICTOR)
async def change_job_state(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    change = parse_state_change(await json_body(request))
    return json_response(await asyncio.to_thread(request.app[DISPATCHER].change_state, job_id, change,
                                                 _caller(request)))
