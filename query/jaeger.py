"""A Jaeger-query-compatible read API under /jaeger/api/, so Jaeger UI and Grafana's Jaeger data
source read mlscope traces with no exporter in between. The routes and shapes are those of
Jaeger's query service (cmd/query/app/http_handler.go, model/json/model.go):

    GET /jaeger/api/services                      {"data": ["svc", ...], "total": n, ...}
    GET /jaeger/api/services/{service}/operations {"data": ["op", ...], ...}
    GET /jaeger/api/traces?service=&operation=&tags=&start=&end=&minDuration=&maxDuration=&limit=
                                                  {"data": [trace, ...], ...}
    GET /jaeger/api/traces/{trace_id}             {"data": [trace], ...}

In Jaeger's units: `start`/`end` in microseconds since the epoch, durations as Go durations
(`1.5ms`, `2s`), `tags` a JSON object of span attributes that must all match. A search finds the
spans of `service` that match, and answers their whole traces, newest first. Errors are Jaeger's
too: `{"data": null, "errors": [{"code": 400, "msg": "..."}]}` with that status.

The SQL is built here (literals through sql_string, numbers through int()); handlers run it
through the reader in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mlscope.auth import Scope, requires
from mlscope.store import sql_string

from .errors import BadRequest, TooLarge
from .export import jaeger_trace, structured_response
from .http import json_response
from .params import int_between, natural, parse_params, text
from .reader import TraceReader
from .timeline import build_timeline
from .traces import SpanCap, check_span_cap

PREFIX = "/jaeger/api"
DEFAULT_LIMIT = 20  # Jaeger UI's default search size
MAX_LIMIT = 1500  # Jaeger UI's largest choice
_NS_PER_US = 1000
_SHOWN = 64

_GO_DURATION_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                         "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TRACE_ID = re.compile(r"[0-9a-fA-F]{1,32}")


@dataclass(frozen=True)
class TraceQuery:
    """A Jaeger trace search, in mlscope's units (nanoseconds)."""

    service: str
    operation: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_LIMIT


def go_duration_ns(name: str, value: str) -> int:
    """A Go duration (`time.ParseDuration`: `300ms`, `1h15m`, `1.5s`) -> nanoseconds."""
    parts = list(_GO_DURATION_PART.finditer(value))
    if not parts or "".join(part.group(0) for part in parts) != value:
        raise BadRequest(f"{name} must be a duration such as 10ms or 1.5s, not {value[:_SHOWN]!r}")
    return round(sum(float(part.group(1)) * _GO_DURATION_UNITS_NS[part.group(2)] for part in parts))


def _tags(name: str, value: str) -> dict[str, str]:
    try:
        tags = json.loads(value)
    except ValueError:
        tags = None
    if not isinstance(tags, dict):
        raise BadRequest(f'{name} must be a JSON object such as {{"key": "value"}}, not {value[:_SHOWN]!r}')
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in tags.items()}


_SEARCH_PARAMS = {
    "operation": text, "start": natural, "end": natural, "minDuration": go_duration_ns, "maxDuration": go_duration_ns,
    "tags": _tags, "limit": int_between(1, MAX_LIMIT),
}


def parse_trace_query(params: Mapping[str, str]) -> TraceQuery:
    """Jaeger's search parameters -> TraceQuery; BadRequest names a bad one."""
    service = params.get("service")
    if not service:
        raise BadRequest("parameter 'service' is required")  # Jaeger's own words
    found = parse_params(params, _SEARCH_PARAMS)
    return TraceQuery(
        service=service,
        operation=found.get("operation"),
        start_ns=found["start"] * _NS_PER_US if "start" in found else None,
        end_ns=found["end"] * _NS_PER_US if "end" in found else None,
        min_duration_ns=found.get("minDuration"),
        max_duration_ns=found.get("maxDuration"),
        tags=found.get("tags", {}),
        limit=found.get("limit", DEFAULT_LIMIT),
    )


def parse_trace_id(value: str) -> str:
    """A Jaeger trace id: up to 32 hex digits, a shorter (64-bit) one left-padded with zeros."""
    if not _TRACE_ID.fullmatch(value):
        raise BadRequest(f"trace id must be up to 32 hex digits, not {value[:_SHOWN]!r}")
    return value.lower().rjust(32, "0")


# --- SQL --------------------------------------------------------------------------------------


def services_sql() -> str:
    return "SELECT DISTINCT service FROM spans ORDER BY service"


def operations_sql(service: str) -> str:
    return f"SELECT DISTINCT name FROM spans WHERE service = {sql_string(service)} ORDER BY name"


def trace_ids_sql(query: TraceQuery) -> str:
    """The traces holding a matching span, newest match first."""
    conditions = [f"service = {sql_string(query.service)}"]
    if query.operation is not None:
        conditions.append(f"name = {sql_string(query.operation)}")
    if query.start_ns is not None:
        conditions.append(f"start_ns >= {int(query.start_ns)}")
    if query.end_ns is not None:
        conditions.append(f"start_ns <= {int(query.end_ns)}")
    if query.min_duration_ns is not None:
        conditions.append(f"duration_ns >= {int(query.min_duration_ns)}")
    if query.max_duration_ns is not None:
        conditions.append(f"duration_ns <= {int(query.max_duration_ns)}")
    for key, value in sorted(query.tags.items()):
        conditions.append(f"has(attr_keys, {sql_string(key)}) "
                          f"AND attr_values[indexOf(attr_keys, {sql_string(key)})] = {sql_string(value)}")
    return (f"SELECT trace_id FROM spans WHERE {' AND '.join(conditions)} "
            f"GROUP BY trace_id ORDER BY max(start_ns) DESC, trace_id LIMIT {int(query.limit)}")


# --- reads (blocking: run in a worker thread) -------------------------------------------------


def jaeger_traces(reader: TraceReader, trace_ids: list[str], cap: SpanCap = SpanCap()) -> list[dict[str, Any]]:
    """Each trace the store holds, as Jaeger renders it; unknown ids are left out. TooLarge for a
    trace past `cap`'s full span count, checked before its spans are read (a whole trace is
    built in memory, as for GET /api/traces/{id})."""
    traces = []
    for trace_id in trace_ids:
        if not check_span_cap(reader, trace_id, cap):
            continue
        spans = reader.trace_spans(trace_id)
        if spans:
            traces.append(jaeger_trace(build_timeline(trace_id, spans)))
    return traces


def find_traces(reader: TraceReader, query: TraceQuery, cap: SpanCap = SpanCap()) -> list[dict[str, Any]]:
    return jaeger_traces(reader, reader.first_column(trace_ids_sql(query)), cap)


# --- routes -----------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return json_response(structured_response(None, [{"code": status, "msg": message}]), status=status)


def jaeger_routes(reader: TraceReader, cap: SpanCap = SpanCap()) -> list[web.RouteDef]:
    """The four routes over `reader`. Each answers its own errors in Jaeger's shape (a Jaeger
    client reads `errors[0].msg`), a trace past `cap` included (413, naming the ways to read
    less, as GET /api/traces/{id} does); a store outage still goes to the app's error middleware."""

    @requires(Scope.READ)
    async def services(request: web.Request) -> web.Response:
        names = await asyncio.to_thread(reader.first_column, services_sql())
        return json_response(structured_response(names))

    @requires(Scope.READ)
    async def operations(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        names = await asyncio.to_thread(reader.first_column, operations_sql(service))
        return json_response(structured_response(names))

    @requires(Scope.READ)
    async def search(request: web.Request) -> web.Response:
        try:
            query = parse_trace_query(request.query)
        except BadRequest as error:
            return _error(400, str(error))
        try:
            found = await asyncio.to_thread(find_traces, reader, query, cap)
        except TooLarge as error:
            return _error(413, str(error))
        return json_response(structured_response(found))

    @requires(Scope.READ)
    async def trace(request: web.Request) -> web.Response:
        try:
            trace_id = parse_trace_id(request.match_info["trace_id"])
        except BadRequest as error:
            return _error(400, str(error))
        try:
            found = await asyncio.to_thread(jaeger_traces, reader, [trace_id], cap)
        except TooLarge as error:
            return _error(413, str(error))
        if not found:
            return _error(404, "trace not found")
        return json_response(structured_response(found))

    return [
        web.get(f"{PREFIX}/services", services),
        web.get(f"{PREFIX}/services/{{service}}/operations", operations),
        web.get(f"{PREFIX}/traces", search),
        web.get(f"{PREFIX}/traces/{{trace_id}}", trace),
    ]
