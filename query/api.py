"""The query service's HTTP API: route table first, thin handlers (parse, call, render). It only
reads: components that write (mlscope.dispatch) are mounted beside it as `Mount`s, and
/openapi.json documents them too. Errors become JSON through query/http.py's middleware.

Store calls block, so they run in worker threads (asyncio.to_thread) and never stall the loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from mlscope.auth import NO_AUTH, AuthPolicy, Scope, Verdict, public, requires
from mlscope.conventions import parse_levels
from mlscope.listener import ListenerLimits, add_body_deadline
from mlscope.store import Store
from mlscope.ui import add_viewer

from .errors import BadRequest, NotFound
from .analysis import MetricSample, analysis_json, analyze
from .diff import diff_json, diff_timelines, subtree
from .evaluations import EvaluationFilter, parse_evaluation_filter
from .export import EXPORTERS
from .http import Mount, authorize, error_response, errors_as_json, flag, json_body, json_response
from .jaeger import jaeger_routes
from .listing import parse_trace_filter, trace_page
from .openapi import conventions_document, openapi_document
from .reader import SqlLimits, TraceReader
from .search import DEFAULT_LIMIT, SEARCH_PARAMS, search_trace
from .settler import SettlerPolicy, settler_context
from .params import int_between, one_of, parse_params, single
from .timeline import COMPACT_COLUMNS, TIMELINE_COLUMNS, Timeline, build_timeline, compact_json, timeline_json, window_json
from .traces import SpanCap, TraceQuery, check_span_cap, read_trace
from .windows import read_window, start_fill

CollectorStatus = Callable[[], dict[str, Any]]

# SQL text and nothing else is posted here; a bigger body is a mistake or an attack.
MAX_BODY_BYTES = 1 * 2**20


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/openapi.json", openapi),
        web.get("/api/conventions", conventions),
        web.get("/api/traces", list_traces),
        web.get("/api/traces/{trace_id}", get_trace),
        web.get("/api/traces/{trace_id}/export", export_trace),
        web.get("/api/traces/{trace_id}/window", get_trace_window),
        web.get("/api/traces/{trace_id}/counters", trace_counters),
        web.get("/api/traces/{trace_id}/search", search_spans),
        web.post("/api/sql", run_sql),
        web.get("/api/evaluations", list_evaluations),
        web.get("/api/traces/{trace_id}/analysis", analyze_trace),
        web.get("/api/diff", diff_traces),
    ]


READER = web.AppKey("reader", TraceReader)
STORE = web.AppKey("store", Store)
COLLECTOR_STATUS: web.AppKey[CollectorStatus | None] = web.AppKey("collector_status")
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
AUTH = web.AppKey("auth", AuthPolicy)
SPAN_CAP = web.AppKey("span_cap", SpanCap)

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
Found = TypeVar("Found")


class EncodedCache:
    """Encoded answers (gzip bytes) by key, the least recently used dropped past `max_bytes`.
    Thread-safe: handlers fill it from worker threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making: dict[Hashable, tuple[threading.Lock, list[int]]] = {}  # key -> (its lock, [callers])

    def get_or_make(self, key: Hashable, make: Callable[[], tuple[bytes, bool] | None]) -> bytes | None:
        """The answer kept under `key`, else the one `make` returns (None, or the answer and whether
        to keep it), made by one caller at a time: the others asking meanwhile wait for it rather
        than make it again (a page opened twice, the settler warming what a page asks for)."""
        with self._lock:
            making, callers = self._making.setdefault(key, (threading.Lock(), [0]))
            callers[0] += 1
        try:
            with making:
                body = self.get(key)
                if body is None:
                    made = make()
                    if made is None:
                        return None
                    body, keep = made
                    if keep:
                        self.put(key, body)
                return body
        finally:
            with self._lock:
                callers[0] -= 1
                if not callers[0]:
                    del self._making[key]

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            body = self._entries.get(key)
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def put(self, key: Hashable, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += len(body) - (len(old) if old is not None else 0)
            self._entries[key] = body
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)


# The compact form of a whole trace, gzipped (about a tenth of its JSON: ~0.75 MB for 100k spans),
# by trace and its row count in span_rows: a re-open of a trace that did not change since is sent
# without reading or treeing it again. Kept only when the read found no copies a retry wrote (as
# many distinct rows as the count): distinct rows only arrive and merges only drop copies, so the
# count is that again only with the same rows. With copies not merged yet, as many copies merged
# away as spans arrived would give the same count over other rows.
COMPACT_CACHE = web.AppKey("compact_cache", EncodedCache)
COMPACT_CACHE_BYTES = 128 * 2**20


def compact_answer(reader: TraceReader, cache: EncodedCache, cap: SpanCap, trace_id: str, query: TraceQuery,
                   row_count: int) -> bytes | None:
    """The compact form of `trace_id` under `query`, gzipped: from `cache`, else read and encoded
    now, and kept there when it is the whole trace and the read found `row_count` distinct rows
    (COMPACT_CACHE says why); None for an unknown trace. `row_count`: its span_row_count,
    counted before this call. Blocking."""
    whole = query == TraceQuery()
    body = cache.get((trace_id, row_count)) if whole else None
    if body is None:
        read = read_trace(reader, trace_id, query, COMPACT_COLUMNS, cap, compact=True, row_count=row_count)
        if read is None:
            return None
        body = gzip.compress(_json_text(compact_json(trace_id, read.columns, read.tree)).encode(), 1, mtime=0)
        if whole and len(read.columns["span_id"]) == row_count:
            cache.put((trace_id, row_count), body)
    return body


# The analysis of a whole trace, gzipped, by trace, its row count in span_rows and how many metric
# samples it covers: the page asks for it on every open, and making it reads and trees every span
# (seconds on a big trace, with the embedded store held for the read). Kept on COMPACT_CACHE's
# condition; samples are only ever added, so their count tells when new ones arrived.
ANALYSIS_CACHE = web.AppKey("analysis_cache", EncodedCache)
ANALYSIS_CACHE_BYTES = 16 * 2**20


def analysis_answer(reader: TraceReader, cache: EncodedCache, cap: SpanCap, trace_id: str) -> bytes | None:
    """GET /api/traces/{id}/analysis's body, gzipped: from `cache`, else made now and kept there
    (ANALYSIS_CACHE says when); None for an unknown trace. Blocking."""
    row_count = reader.span_row_count(trace_id)
    bounds = reader.trace_bounds(trace_id) if row_count else None
    if bounds is None:
        return None
    samples = trace_samples(reader, trace_id, bounds)

    def make() -> tuple[bytes, bool] | None:
        check_span_cap(reader, trace_id, cap, row_count=row_count)
        spans = reader.trace_spans(trace_id)
        if not spans:
            return None
        body = gzip.compress(_json_text(analysis_json(analyze(build_timeline(trace_id, spans), samples))).encode(), 1, mtime=0)
        return body, len(spans) == row_count

    return cache.get_or_make((trace_id, row_count, len(samples)), make)


def trace_samples(reader: TraceReader, trace_id: str, bounds: tuple[int, int]) -> list[MetricSample]:
    """The metric samples the services of `trace_id` took over `bounds` (its trace_bounds)."""
    return reader.metric_samples(reader.trace_services(trace_id), *bounds)


def create_query_app(
    store: Store, collector_status: CollectorStatus | None = None, *, sql_limits: SqlLimits = SqlLimits(),
    mounts: Sequence[Mount] = (), auth: AuthPolicy = NO_AUTH,
    body_timeout_s: float = ListenerLimits.body_timeout_s, span_cap: SpanCap = SpanCap(),
    fill_window_caches: SettlerPolicy | None = None,
) -> web.Application:
    """The query API and the viewer over `store`, with `mounts` served beside them;
    `collector_status`, when given, is reported by /readyz (a collector running in the same
    process). `auth` decides who may call each route, the mounts' included. A request body still
    arriving `body_timeout_s` after its head closes the connection (mlscope.listener); a trace
    past `span_cap` is answered 413. With `fill_window_caches`, big traces get their windowed
    read's cache filled in the background once quiet (query/settler.py), and those the viewer
    reads whole their compact form in this app's cache: only in the one process per store that
    writes."""
    app = web.Application(middlewares=[errors_as_json, authorize(auth)], client_max_size=MAX_BODY_BYTES)
    add_body_deadline(app, body_timeout_s)
    app[STORE] = store
    app[READER] = TraceReader(store, sql_limits)
    app[COLLECTOR_STATUS] = collector_status
    app[OPENAPI] = openapi_document(mounts)
    app[AUTH] = auth
    app[SPAN_CAP] = span_cap
    app[COMPACT_CACHE] = EncodedCache(COMPACT_CACHE_BYTES)
    app[ANALYSIS_CACHE] = EncodedCache(ANALYSIS_CACHE_BYTES)
    app.add_routes([*_routes(), *jaeger_routes(app[READER], span_cap)])
    for mount in mounts:
        app.add_subapp(mount.prefix, mount.app)
    add_viewer(app)
    if fill_window_caches is not None:
        reader, cache, analyses = app[READER], app[COMPACT_CACHE], app[ANALYSIS_CACHE]

        def warm(trace_id: str, row_count: int) -> None:  # the whole trace as the viewer asks for it
            compact_answer(reader, cache, span_cap, trace_id, TraceQuery(), row_count)
            analysis_answer(reader, analyses, span_cap, trace_id)

        app.cleanup_ctx.append(settler_context(reader, fill_window_caches, warm))
    return app


# --- request parsing --------------------------------------------------------------------------


def _trace_id(request: web.Request) -> str:
    text = request.match_info["trace_id"]
    if not _TRACE_ID.fullmatch(text):
        raise BadRequest(f"trace id must be 32 hex digits, not {text[:64]!r}")
    return text.lower()


async def _timeline(request: web.Request, trace_id: str) -> Timeline:
    reader = request.app[READER]
    if not await asyncio.to_thread(check_span_cap, reader, trace_id, request.app[SPAN_CAP]):
        raise NotFound(f"trace {trace_id} not found")
    spans = await asyncio.to_thread(reader.trace_spans, trace_id)
    if not spans:
        raise NotFound(f"trace {trace_id} not found")
    return await asyncio.to_thread(build_timeline, trace_id, spans)  # seconds for a big trace: never on the loop


_NANOSECONDS = int_between(0, 2**64 - 1)
TRACE_PARAMS = {"max_depth": int_between(0, 10_000), "start_ns": _NANOSECONDS, "end_ns": _NANOSECONDS,
                "format": one_of(("json", "compact")), "max_spans": int_between(0, 2**63)}
WINDOW_PARAMS = {"start_ns": _NANOSECONDS, "end_ns": _NANOSECONDS, "resolution_ns": int_between(1, 2**63),
                 "pixels": int_between(1, 100_000)}
DEFAULT_PIXELS = 2_000


def _window(params: dict[str, int], bounds: tuple[int, int] = (0, 2**64 - 1)) -> tuple[int, int]:
    window = (params.get("start_ns", bounds[0]), params.get("end_ns", bounds[1]))
    if window[1] < window[0]:
        raise BadRequest("end_ns must not be before start_ns")
    return window


def _json_text(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


async def _trace_off_loop(trace_id: str, read: Callable[[], Found | None]) -> Found:
    """What `read` finds of trace `trace_id`, read in a worker thread (a big trace takes a
    while); NotFound when it finds no such trace."""
    found = await asyncio.to_thread(read)
    if found is None:
        raise NotFound(f"trace {trace_id} not found")
    return found


def _json_text_response(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header lets the answer be gzip: named (else `*`) without q=0."""
    weights: dict[str, str] = {}
    for entry in accept_encoding.split(","):
        coding, *params = (part.strip() for part in entry.split(";"))
        weights.setdefault(coding.lower(), next((param[2:] for param in params if param.lower().startswith("q=")), "1"))
    weight = weights.get("gzip", weights.get("*", "0"))
    try:
        return float(weight) > 0
    except ValueError:
        return False


def _gzip_json_response(body: bytes, gzipped: bool) -> web.Response:
    headers = {"Vary": "Accept-Encoding", **({"Content-Encoding": "gzip"} if gzipped else {})}
    return web.Response(body=body, content_type="application/json", headers=headers)


# --- handlers ---------------------------------------------------------------------------------


@public
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@public
async def readyz(request: web.Request) -> web.Response:
    """Ready or not for anyone (probes carry no token); the store URL, the spool's figures and the
    errors' text only for a caller who may read, since they name paths and hosts."""
    store = request.app[STORE]
    status = request.app[COLLECTOR_STATUS]
    detailed = request.app[AUTH].check(request.headers.get("Authorization"), Scope.READ) is Verdict.ALLOWED
    health = await store.health.check()  # within a second, whatever the store does
    collector = status() if status else {}
    extra = ({"store": store.url, "store_state_age_s": round(health.age_s, 3),
              **({"collector": collector} if status else {})} if detailed else {})

    def unavailable(reason: str, error: object) -> web.Response:
        return error_response(503, f"{reason}: {error}" if detailed else reason, status="unavailable", **extra)

    if not health.ok:
        return unavailable("store unavailable", health.error)
    replay_error = collector.get("replay_error")
    if replay_error:  # acknowledged spans wait in the spool until the replay works again
        return unavailable("spool replay failing", replay_error)
    return json_response({"status": "ready", **extra})


@public
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


@public
async def conventions(request: web.Request) -> web.Response:
    return json_response(conventions_document())


@requires(Scope.READ)
async def list_traces(request: web.Request) -> web.Response:
    trace_filter = parse_trace_filter(request.query, request.query.getall("attr", []))
    summaries = await asyncio.to_thread(request.app[READER].list_traces, trace_filter)
    traces, next_cursor = trace_page(summaries, trace_filter)
    return json_response({"traces": traces, "next_cursor": next_cursor})


@requires(Scope.READ)
async def get_trace(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    params = parse_params(request.query, TRACE_PARAMS)
    windowed = "start_ns" in params or "end_ns" in params
    query = TraceQuery(levels=parse_levels(single(request.query, "levels") or None), max_depth=params.get("max_depth"),
                       window=_window(params) if windowed else None, raw=flag(request, "raw"))
    reader, cap = request.app[READER], request.app[SPAN_CAP]
    if params.get("format") == "compact":
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        cache = request.app[COMPACT_CACHE]

        def read_compact() -> bytes | None:  # a big trace takes a while to read and encode: off the loop
            row_count = reader.span_row_count(trace_id)
            if query == TraceQuery() and row_count > max(params.get("max_spans", cap.compact), SettlerPolicy.min_spans):
                # Likely answered 413 (rows may be copies): the viewer reads it by windows next,
                # whose first one fills the trace's window cache. Its fill starts now: one the
                # settler would make once the trace is quiet (so, at most once per trace).
                start_fill(reader, trace_id, first=True)
            if "max_spans" in params:
                check_span_cap(reader, trace_id, SpanCap(compact=params["max_spans"]), compact=True, row_count=row_count)
            body = compact_answer(reader, cache, cap, trace_id, query, row_count)
            return None if body is None else body if gzipped else gzip.decompress(body)

        return _gzip_json_response(await _trace_off_loop(trace_id, read_compact), gzipped)
    if "max_spans" in params:
        raise BadRequest("max_spans is for format=compact")

    def read_and_render() -> str | None:  # a big trace takes a while to encode: off the loop
        read = read_trace(reader, trace_id, query, TIMELINE_COLUMNS, cap)
        return None if read is None else timeline_json(trace_id, read.columns, read.tree)  # joined from the store's text

    return _json_text_response(await _trace_off_loop(trace_id, read_and_render))


@requires(Scope.READ)
async def get_trace_window(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    params = parse_params(request.query, WINDOW_PARAMS)
    reader = request.app[READER]

    def read_and_render() -> str | None:
        bounds = reader.trace_bounds(trace_id)
        if bounds is None:
            return None
        window = _window(params, bounds)
        pixels = params.get("pixels", DEFAULT_PIXELS)
        resolution = params.get("resolution_ns") or max(1, -(-(window[1] - window[0]) // pixels))
        read = read_window(reader, trace_id, window, resolution)
        return None if read is None else _json_text(window_json(trace_id, window, resolution, read))

    return _json_text_response(await _trace_off_loop(trace_id, read_and_render))


def counter_series(samples: Sequence[MetricSample], origin_ns: int) -> list[dict[str, Any]]:
    """Samples grouped per service and series (name and attributes), times as offsets from origin_ns."""
    series: dict[tuple[str, Any], dict[str, Any]] = {}
    for sample in samples:
        entry = series.setdefault((sample.service, sample.series()), {
            "service": sample.service, "name": sample.name, "kind": sample.kind, "unit": sample.unit,
            "attributes": dict(sample.attributes), "offset_ns": [], "value": []})
        entry["offset_ns"].append(sample.time_ns - origin_ns)
        entry["value"].append(sample.value)
    return list(series.values())


@requires(Scope.READ)
async def trace_counters(request: web.Request) -> web.Response:
    """The trace's extent and span count (so a viewer picks the whole or the windowed read in one
    request) and the metric series its services sampled over it, for counter tracks."""
    trace_id = _trace_id(request)
    reader = request.app[READER]

    def read() -> dict[str, Any] | None:
        bounds = reader.trace_bounds(trace_id)
        if bounds is None:
            return None
        samples = trace_samples(reader, trace_id, bounds)
        return {"trace_id": trace_id, "start_ns": bounds[0], "end_ns": bounds[1],
                "span_count": reader.span_count(trace_id), "series": counter_series(samples, bounds[0])}

    return json_response(await _trace_off_loop(trace_id, read))


@requires(Scope.READ)
async def search_spans(request: web.Request) -> web.Response:
    """The spans of the whole trace whose name or layer label holds ?q= (query/search.py)."""
    trace_id = _trace_id(request)
    params = parse_params(request.query, SEARCH_PARAMS)
    if "q" not in params:
        raise BadRequest("q (the text to search for) is required")
    reader = request.app[READER]
    return json_response(await _trace_off_loop(
        trace_id, lambda: search_trace(reader, trace_id, params["q"], params.get("limit", DEFAULT_LIMIT))))


@requires(Scope.READ)
async def export_trace(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    name = single(request.query, "format")
    exporter = EXPORTERS.get(name)
    if exporter is None:
        raise BadRequest(f"format must be one of {', '.join(sorted(EXPORTERS))}, not {name[:32]!r}")
    timeline = await _timeline(request, trace_id)
    reader = request.app[READER]
    bounds = await asyncio.to_thread(reader.trace_bounds, trace_id)
    samples = await asyncio.to_thread(trace_samples, reader, trace_id, bounds) if bounds else []
    body = await asyncio.to_thread(exporter.render, timeline, samples)  # a big trace takes a while
    disposition = f'attachment; filename="trace-{timeline.trace_id}.{exporter.suffix}"'
    return web.Response(body=body, content_type=exporter.media_type, headers={"Content-Disposition": disposition})


@requires(Scope.READ)
async def run_sql(request: web.Request) -> web.Response:
    body = await json_body(request)
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str):
        raise BadRequest('the body must be {"query": "<SQL>"}')
    # The physical tables and dispatch's views are the admin scope's (without --auth, everyone's: loopback only).
    admin = request.app[AUTH].check(request.headers.get("Authorization"), Scope.ADMIN) is Verdict.ALLOWED
    # The guard reads up to a MiB of text: off the loop with the query (reader.run_sql).
    answer = await asyncio.to_thread(request.app[READER].run_sql, query, admin)
    return json_response(answer.to_json())


@requires(Scope.READ)
async def list_evaluations(request: web.Request) -> web.Response:
    evaluation_filter = parse_evaluation_filter(request.query)
    rows = await asyncio.to_thread(request.app[READER].evaluations, evaluation_filter)
    return json_response({"evaluations": rows})


@requires(Scope.READ)
async def analyze_trace(request: web.Request) -> web.Response:
    trace_id = _trace_id(request)
    reader, cache, cap = request.app[READER], request.app[ANALYSIS_CACHE], request.app[SPAN_CAP]
    body = await _trace_off_loop(trace_id, lambda: analysis_answer(reader, cache, cap, trace_id))
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    return _gzip_json_response(body if gzipped else gzip.decompress(body), gzipped)


_EVALUATION_ID = re.compile(r"[0-9a-fA-F]{16}")


async def _diff_side(request: web.Request, name: str) -> tuple[Timeline, str]:
    """`?a=` / `?b=`: a trace id (32 hex digits), or an evaluation id (16: the `span_id` of its
    `evaluations` row), which stands for its `mlscope.evaluation` span's subtree of its trace."""
    value = single(request.query, name)
    if _TRACE_ID.fullmatch(value):
        trace_id = value.lower()
        return await _timeline(request, trace_id), trace_id
    if not _EVALUATION_ID.fullmatch(value):
        raise BadRequest(f"{name} must be a trace id (32 hex digits) or an evaluation id (16), not {value[:64]!r}")
    span_id = value.lower()
    rows = await asyncio.to_thread(request.app[READER].evaluations, EvaluationFilter(span_id=span_id))
    if not rows:
        raise NotFound(f"evaluation {span_id} not found")
    trace_id = rows[0]["trace_id"]
    evaluation = subtree(await _timeline(request, trace_id), span_id)
    if evaluation is None:
        raise NotFound(f"evaluation {span_id}: its span is not in trace {trace_id}")
    return evaluation, f"{trace_id}/{span_id}"


@requires(Scope.READ)
async def diff_traces(request: web.Request) -> web.Response:
    (a, a_label), (b, b_label) = await _diff_side(request, "a"), await _diff_side(request, "b")
    return json_response(await asyncio.to_thread(lambda: diff_json(diff_timelines(a, b, a_label, b_label))))
