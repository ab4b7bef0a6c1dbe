"""The OpenAPI 3 description of the query API and what is mounted beside it, served at
/openapi.json; and the conventions document of GET /api/conventions.

Written by hand as data: the routes are few, and a test checks that this document and the
app's route table name the same paths and methods. The helpers are public for the mounted
components, which describe their own routes (`Mount.paths`, `Mount.schemas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlscope.conventions import DEFAULT_LEVEL, LEVELS

from .evaluations import NUMBER_FILTERS as EVALUATION_NUMBER_FILTERS
from .evaluations import TEXT_FILTERS as EVALUATION_TEXT_FILTERS
from .export import EXPORTERS
from .http import Mount
from .jaeger import DEFAULT_LIMIT as JAEGER_DEFAULT_LIMIT
from .jaeger import MAX_LIMIT as JAEGER_MAX_LIMIT
from .jaeger import PREFIX as JAEGER_PREFIX
from .listing import MAX_LIMIT, NUMBER_FILTERS, STATUSES, TEXT_FILTERS
from .search import DEFAULT_LIMIT as SEARCH_DEFAULT_LIMIT
from .search import MAX_LIMIT as SEARCH_LIMIT
from .search import MAX_TEXT_CHARS as SEARCH_TEXT_CHARS
from .timeline import VIEWER_ATTRIBUTES


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = json_content(ref("Error"), "error")
INTEGER = {"type": "integer", "format": "int64", "minimum": 0}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TRACE_ID = {
    "name": "trace_id", "in": "path", "required": True,
    "description": "32 hex digits (upper case accepted)",
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
}


def json_body_of(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# What a window or search answer says of the rows it covers (query/windows.py read_fill).
_COVERED_ROWS = {
    "span_count": {**INTEGER, "description": "the trace's rows (in span_rows) the answer was made from"},
    "spans_now": {**INTEGER, "description": "the trace's rows now: more than span_count while it grows (the answer "
                                            "comes from its latest window cache, made again in the background)"},
}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "TraceSummary": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"}, "root_name": {"type": "string"}, "service": {"type": "string"},
            "start_ns": INTEGER, "end_ns": INTEGER, "duration_ns": INTEGER, "span_count": INTEGER,
            "model": {"type": "string"}, "framework": {"type": "string"},
        },
    },
    "Span": {
        "type": "object",
        "properties": {
            "span_id": {"type": "string"}, "parent_span_id": {"type": "string", "description": "'' for a root"},
            "name": {"type": "string"}, "kind": {"type": "string"}, "service": {"type": "string"},
            "level": {"type": "string", "enum": list(LEVELS)},
            "start_ns": INTEGER, "end_ns": INTEGER, "duration_ns": INTEGER,
            "self_ns": {**INTEGER, "description": "duration minus the union of the children's intervals"},
            "depth": {"type": "integer", "minimum": 0},
            "attributes": STRING_MAP, "resource": STRING_MAP,
            "events": {"type": "array", "items": {"type": "object", "properties": {
                "time_ns": INTEGER, "name": {"type": "string"}, "attributes": {"type": "object"}}}},
            "links": {"type": "array", "items": {"type": "object"}},
            "status": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "scope": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        },
    },
    "Timeline": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"},
            "spans": {"type": "array", "items": ref("Span"), "description": "pre-order; siblings by start time"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "CompactTimeline": {
        "type": "object",
        "description": "?format=compact: the timeline as parallel arrays in pre-order (index i of every array is "
                       "span i); name, service and level are indexes into `strings`; start_ns is an offset from "
                       "origin_ns, so every number stays below 2**53. The service keeps the whole trace's answer "
                       "(gzipped) by trace and stored row count, when no retried copy awaits a merge: a re-read "
                       "of an unchanged trace is not read from the store again, one that gained spans is",
        "properties": {
            "trace_id": {"type": "string"}, "format": {"type": "string", "enum": ["compact"]},
            "origin_ns": {"type": "string", "description": "the first start, ns since the epoch, in decimal"},
            "span_id": {"type": "array", "items": {"type": "string"}, "description": "16 hex digits"},
            "parent": {"type": "array", "items": {"type": "integer"}, "description": "the parent's index, -1 for a root"},
            "name": {"type": "array", "items": {"type": "integer"}},
            "service": {"type": "array", "items": {"type": "integer"}},
            "level": {"type": "array", "items": {"type": "integer"}},
            "start_ns": {"type": "array", "items": INTEGER}, "duration_ns": {"type": "array", "items": INTEGER},
            "self_ns": {"type": "array", "items": INTEGER}, "depth": {"type": "array", "items": INTEGER},
            "attributes": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                           "description": "the attributes the viewer draws with (the values of /api/conventions' "
                                          "attributes): per key, each span's value (its attribute, else its "
                                          "resource's) as an index into `strings`, -1 where it has none"},
            "strings": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TraceWindow": {
        "type": "object",
        "description": "the spans overlapping a window at a resolution: a span at least resolution_ns long is an "
                       "entry of its own (count 1, its span_id); narrower ones are merged per track (service), "
                       "depth and resolution-wide slot (span_id '')",
        "properties": {
            "trace_id": {"type": "string"}, "start_ns": INTEGER, "end_ns": INTEGER, "resolution_ns": INTEGER,
            **_COVERED_ROWS,
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "track": {"type": "string"}, "depth": INTEGER, "start_ns": INTEGER, "end_ns": INTEGER,
                "count": INTEGER, "total_ns": {**INTEGER, "description": "summed duration of the merged spans"},
                "name": {"type": "string", "description": "the name holding most of total_ns"},
                "level": {"type": "string", "enum": list(LEVELS),
                          "description": "a single span's level; merged spans: the level holding most of total_ns"},
                "span_id": {"type": "string"},
                "parent_span_id": {"type": "string", "description": "single spans only (count 1): the parent's "
                                                                      "span_id, '' for a root"},
                "attributes": {"type": "object", "additionalProperties": {"type": "string"},
                               "description": "single spans only (count 1): the viewer's attributes "
                                              "(the values of /api/conventions' attributes) the span has (its own, else its "
                                              "resource's), by key"}}}},
        },
    },
    "TraceSearch": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"}, "q": {"type": "string"}, **_COVERED_ROWS,
            "total": {**INTEGER, "description": "how many spans match, listed or not"},
            "matches": {"type": "array", "description": "the first `limit`, by start_ns, depth, span_id",
                        "items": {"type": "object", "properties": {
                            "span_id": {"type": "string"}, "name": {"type": "string"},
                            "level": {"type": "string", "enum": list(LEVELS)},
                            "track": {"type": "string", "description": "the service, as the window entries' track"},
                            "depth": INTEGER, "start_ns": INTEGER, "end_ns": INTEGER}}},
        },
    },
    "TraceCounters": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"}, "start_ns": INTEGER, "end_ns": INTEGER,
            "span_count": {**INTEGER, "description": "distinct spans"},
            "series": {"type": "array", "items": {"type": "object", "properties": {
                "service": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"},
                "unit": {"type": "string"}, "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                "offset_ns": {"type": "array", "items": {"type": "integer"},
                              "description": "each sample's time after start_ns, oldest first"},
                "value": {"type": "array", "items": {"type": "number"}}}}},
        },
    },
    "Evaluation": {
        "type": "object",
        "description": "one row of the `evaluations` table (docs/manifests.md lists the columns); "
                       "a value that was not measured is null",
        "additionalProperties": True,
        "properties": {
            "trace_id": {"type": "string"}, "span_id": {"type": "string"}, "model": {"type": "string"},
            "framework": {"type": "string"}, "batch_size": INTEGER, "scenario": {"type": "string"},
            "system": {"type": "string", "description": "fingerprint of the HW/SW stack"},
            "latency_p50_ns": INTEGER, "latency_p90_ns": INTEGER, "latency_p99_ns": INTEGER,
            "throughput": {"type": "number", "nullable": True, "description": "samples per second"},
            "accuracy_top1": {"type": "number", "nullable": True},
        },
    },
    "Conventions": {
        "type": "object",
        "properties": {"levels": {"type": "array", "items": {"type": "string"}, "description": "shallowest first"},
                       "default_level": {"type": "string", "description": "the level of a span that carries none"}},
    },
    "SqlRequest": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}},
    "SqlResult": {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}}}},
            "rows": {"type": "array", "items": {"type": "array", "items": {}}},
            "truncated": {"type": "boolean", "description": "more rows than the limit: the rest were cut"},
        },
    },
}


def conventions_document() -> dict[str, Any]:
    """What the viewer takes from mlscope.conventions instead of a copy of its own: the levels,
    shallowest first, the level a span without one counts as, and the names of the attributes
    it reads (tracks by process and thread, layer labels)."""
    return {"levels": list(LEVELS), "default_level": DEFAULT_LEVEL, "attributes": dict(VIEWER_ATTRIBUTES)}


def _jaeger_paths() -> dict[str, Any]:
    """Jaeger's query API (query/jaeger.py): its own shapes, `{"data", "total", "limit", "offset",
    "errors"}`, errors included."""
    answer = json_content({"type": "object", "properties": {
        "data": {}, "total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
        "errors": {"type": "array", "nullable": True, "items": {"type": "object"}}}}, "Jaeger's structuredResponse")
    search = [
        {**query_param("service", {"type": "string"}, "required"), "required": True},
        query_param("operation", {"type": "string"}, "span name"),
        query_param("tags", {"type": "string"}, 'JSON object of span attributes, e.g. {"k": "v"}'),
        *(query_param(name, INTEGER, "microseconds since the epoch") for name in ("start", "end")),
        *(query_param(name, {"type": "string"}, "Go duration (10ms, 1.5s)") for name in ("minDuration", "maxDuration")),
        query_param("limit", {"type": "integer", "minimum": 1, "maximum": JAEGER_MAX_LIMIT,
                              "default": JAEGER_DEFAULT_LIMIT}, "at most"),
    ]
    service = {"name": "service", "in": "path", "required": True, "schema": {"type": "string"}}
    trace_id = {"name": "trace_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{1,32}$"}}
    return {
        f"{JAEGER_PREFIX}/services": {"get": {"summary": "Jaeger: service names", "responses": {"200": answer}}},
        f"{JAEGER_PREFIX}/services/{{service}}/operations": {"get": {
            "summary": "Jaeger: a service's span names", "parameters": [service], "responses": {"200": answer}}},
        f"{JAEGER_PREFIX}/traces": {"get": {
            "summary": "Jaeger: traces with a matching span, newest first", "parameters": search,
            "responses": {"200": answer, "400": answer}}},
        f"{JAEGER_PREFIX}/traces/{{trace_id}}": {"get": {
            "summary": "Jaeger: one trace", "parameters": [trace_id],
            "responses": {"200": answer, "400": answer, "404": answer}}},
    }


def openapi_document(mounts: Sequence[Mount] = ()) -> dict[str, Any]:
    list_params = [
        *(query_param(name, {"type": "string"}, f"exact {name}") for name in TEXT_FILTERS),
        *(query_param(name, INTEGER, "nanoseconds") for name in NUMBER_FILTERS),
        query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, "at most"),
        {**query_param("attr", {"type": "array", "items": {"type": "string"}},
                       "key=value, repeatable: traces with a span carrying every one"), "explode": True},
        query_param("level", {"type": "string", "enum": list(LEVELS)}, "traces with a span of this level"),
        query_param("status", {"type": "string", "enum": list(STATUSES)}, "traces with a span of this status"),
        query_param("name", {"type": "string"}, "traces with a span of this name"),
        query_param("cursor", {"type": "string"}, "the next_cursor of the previous page"),
    ]
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlscope query API", "version": "1"},
        "paths": {
            "/healthz": {"get": {"summary": "the process is up",
                                 "responses": {"200": json_content({"type": "object"}, "ok")}}},
            "/readyz": {"get": {
                "summary": "the store answers (and the collector's status, when one runs here)",
                "responses": {"200": json_content({"type": "object"}, "ready"), "503": ERROR}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {"200": json_content({"type": "object"}, "OpenAPI 3")}}},
            "/api/conventions": {"get": {
                "summary": "the shared names the viewer reads (levels in order, the default level)",
                "responses": {"200": json_content(ref("Conventions"), "the conventions")}}},
            "/api/traces": {"get": {
                "summary": "traces, newest first", "parameters": list_params,
                "responses": {
                    "200": json_content({"type": "object", "properties": {
                        "traces": {"type": "array", "items": ref("TraceSummary")},
                        "next_cursor": {"type": "string", "nullable": True,
                                        "description": "set when the page is full: pass it as cursor"}}},
                        "trace summaries"),
                    "400": ERROR}}},
            "/api/traces/{trace_id}": {"get": {
                "summary": "one trace's timeline",
                "parameters": [
                    _TRACE_ID,
                    query_param("levels", {"type": "string"}, f"comma-separated subset of {', '.join(LEVELS)}"),
                    query_param("raw", {"type": "string", "enum": ["0", "1", "true", "false"]},
                           "1: stored rows, no adjusters, no tree"),
                    query_param("max_depth", {"type": "integer", "minimum": 0}, "leave out spans deeper than this "
                                "(depth after the levels filter)"),
                    query_param("start_ns", INTEGER, "only spans overlapping [start_ns, end_ns]"),
                    query_param("end_ns", INTEGER, "only spans overlapping [start_ns, end_ns]"),
                    query_param("format", {"type": "string", "enum": ["json", "compact"], "default": "json"},
                                "compact: the CompactTimeline schema, gzip-encoded when Accept-Encoding allows"),
                    query_param("max_spans", {"type": "integer", "minimum": 0},
                                "format=compact only: 413 when the trace index counts more spans than this, "
                                "answered before any span is read (a viewer's cue to read windows instead); "
                                "a trace past it with no window cache yet starts filling one for those reads"),
                ],
                "responses": {"200": {"description": "the timeline", "content": {"application/json": {"schema": {
                    "oneOf": [ref("Timeline"), ref("CompactTimeline")]}}}}, "400": ERROR, "404": ERROR,
                    "413": {**ERROR, "description": "more spans than one answer holds, or than max_spans"}}}},
            "/api/traces/{trace_id}/window": {"get": {
                "summary": "one trace's spans in a time window at a level of detail (spans narrower than the "
                           "resolution merged)",
                "parameters": [
                    _TRACE_ID,
                    query_param("start_ns", INTEGER, "the window's start (default: the trace's)"),
                    query_param("end_ns", INTEGER, "the window's end (default: the trace's)"),
                    query_param("resolution_ns", {"type": "integer", "minimum": 1}, "nanoseconds per pixel"),
                    query_param("pixels", {"type": "integer", "minimum": 1, "maximum": 100000, "default": 2000},
                                "the window's width in pixels, when resolution_ns is not given"),
                ],
                "responses": {"200": json_content(ref("TraceWindow"), "the window"), "400": ERROR, "404": ERROR}}},
            "/api/traces/{trace_id}/search": {"get": {
                "summary": "the spans of the whole trace whose name or layer label (`features.3 (Conv2d)`) "
                           "contains a text, case-insensitively, by start time (then depth, span id); depth and "
                           "track as the window reads draw them (this reads and fills the same window cache)",
                "parameters": [
                    _TRACE_ID,
                    {**query_param("q", {"type": "string", "minLength": 1, "maxLength": SEARCH_TEXT_CHARS},
                                   "the text, matched as given (no pattern)"), "required": True},
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": SEARCH_LIMIT,
                                          "default": SEARCH_DEFAULT_LIMIT}, "the most matches listed"),
                ],
                "responses": {"200": json_content(ref("TraceSearch"), "the matches"), "400": ERROR, "404": ERROR}}},
            "/api/traces/{trace_id}/counters": {"get": {
                "summary": "one trace's extent and span count, and the metric series its services sampled "
                           "over it (the viewer's counter tracks)",
                "parameters": [_TRACE_ID],
                "responses": {"200": json_content(ref("TraceCounters"), "the counters"), "404": ERROR}}},
            "/api/traces/{trace_id}/export": {"get": {
                "summary": "one trace as a file: Jaeger UI JSON, Chrome/Perfetto trace-event JSON, or a Perfetto "
                           "protobuf trace (TrackEvent; a .pftrace file)",
                "parameters": [_TRACE_ID, query_param(
                    "format", {"type": "string", "enum": sorted(EXPORTERS)},
                    "jaeger: Jaeger UI JSON; perfetto: trace-event JSON with counter tracks; perfetto-proto: "
                    "Perfetto's protobuf Trace, slices at the spans' nanoseconds and counter tracks")],
                "responses": {"200": {"description": "the exported trace", "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}},
                    "400": ERROR, "404": ERROR}}},
            "/api/evaluations": {"get": {
                "summary": "evaluation results, by model, framework, batch size and scenario",
                "parameters": [
                    *(query_param(name, {"type": "string"}, f"exact {name}") for name in EVALUATION_TEXT_FILTERS),
                    *(query_param(name, INTEGER, f"exact {name}") for name in EVALUATION_NUMBER_FILTERS),
                ],
                "responses": {
                    "200": json_content({"type": "object", "properties": {
                        "evaluations": {"type": "array", "items": ref("Evaluation")}}}, "evaluation rows"),
                    "400": ERROR}}},
            "/api/sql": {"post": {
                "summary": "one read-only SQL statement, run under limits",
                "requestBody": json_body_of("SqlRequest"),
                "responses": {"200": json_content(ref("SqlResult"), "the result"), "400": ERROR, "503": ERROR}}},
            "/api/traces/{trace_id}/analysis": {"get": {
                "summary": "where the trace's time goes (query/analysis.py): by_level, top_self, op_types, "
                           "layers (by module path), critical_path (from the longest root, each step the child "
                           "that ends last), idle, hardware (metric samples per model span)",
                "parameters": [_TRACE_ID],
                "responses": {"200": json_content({"type": "object", "properties": {
                    name: {"type": "array", "items": {"type": "object"}} for name in (
                        "by_level", "top_self", "op_types", "layers", "critical_path", "idle", "hardware")}},
                    "the analysis"), "400": ERROR, "404": ERROR}}},
            "/api/diff": {"get": {
                "summary": "two traces (or two evaluations' subtrees) compared: layers matched by module path, "
                           "op types, levels; a_ns, b_ns, delta_ns, ratio; unmatched layers in a_only/b_only",
                "parameters": [
                    {**query_param(side, {"type": "string", "pattern": "^([0-9a-fA-F]{16}|[0-9a-fA-F]{32})$"},
                                   "a trace id (32 hex digits) or an evaluation id (the 16-hex span_id of its "
                                   "evaluations row)"), "required": True}
                    for side in ("a", "b")],
                "responses": {"200": json_content({"type": "object", "properties": {
                    name: {"type": "array", "items": {"type": "object"}} for name in (
                        "layers", "a_only", "b_only", "ops", "levels")}}, "the diff"),
                    "400": ERROR, "404": ERROR}}},
            **_jaeger_paths(),
            **{path: item for mount in mounts for path, item in mount.paths.items()},
        },
        "components": {"schemas": {**SCHEMAS, **{name: schema for mount in mounts for name, schema in mount.schemas.items()}}},
    }
