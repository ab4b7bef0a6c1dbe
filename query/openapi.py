"""The OpenAPI 3 description of the query API, served at /openapi.json.

Written by hand as data: the routes are few, and a test checks that this document and the
app's route table name the same paths and methods.
"""

from __future__ import annotations

from typing import Any

from mlscope.conventions import LEVELS

from .dispatch import JOB_STATES
from .evaluations import NUMBER_FILTERS as EVALUATION_NUMBER_FILTERS
from .evaluations import TEXT_FILTERS as EVALUATION_TEXT_FILTERS
from .export import EXPORTERS
from .listing import MAX_LIMIT, NUMBER_FILTERS, TEXT_FILTERS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "error")
_INTEGER = {"type": "integer", "format": "int64", "minimum": 0}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TRACE_ID = {
    "name": "trace_id", "in": "path", "required": True,
    "description": "32 hex digits (upper case accepted)",
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "TraceSummary": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"}, "root_name": {"type": "string"}, "service": {"type": "string"},
            "start_ns": _INTEGER, "end_ns": _INTEGER, "duration_ns": _INTEGER, "span_count": _INTEGER,
            "model": {"type": "string"}, "framework": {"type": "string"},
        },
    },
    "Span": {
        "type": "object",
        "properties": {
            "span_id": {"type": "string"}, "parent_span_id": {"type": "string", "description": "'' for a root"},
            "name": {"type": "string"}, "kind": {"type": "string"}, "service": {"type": "string"},
            "level": {"type": "string", "enum": list(LEVELS)},
            "start_ns": _INTEGER, "end_ns": _INTEGER, "duration_ns": _INTEGER,
            "self_ns": {**_INTEGER, "description": "duration minus the union of the children's intervals"},
            "depth": {"type": "integer", "minimum": 0},
            "attributes": _STRING_MAP, "resource": _STRING_MAP,
            "events": {"type": "array", "items": {"type": "object", "properties": {
                "time_ns": _INTEGER, "name": {"type": "string"}, "attributes": {"type": "object"}}}},
            "links": {"type": "array", "items": {"type": "object"}},
            "status": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "scope": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        },
    },
    "Timeline": {
        "type": "object",
        "properties": {
            "trace_id": {"type": "string"},
            "spans": {"type": "array", "items": _ref("Span"), "description": "pre-order; siblings by start time"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Evaluation": {
        "type": "object",
        "description": "one row of the `evaluations` table (docs/manifests.md lists the columns); "
                       "a value that was not measured is null",
        "additionalProperties": True,
        "properties": {
            "trace_id": {"type": "string"}, "span_id": {"type": "string"}, "model": {"type": "string"},
            "framework": {"type": "string"}, "batch_size": _INTEGER, "scenario": {"type": "string"},
            "system": {"type": "string", "description": "fingerprint of the HW/SW stack"},
            "latency_p50_ns": _INTEGER, "latency_p90_ns": _INTEGER, "latency_p99_ns": _INTEGER,
            "throughput": {"type": "number", "nullable": True, "description": "samples per second"},
            "accuracy_top1": {"type": "number", "nullable": True},
        },
    },
    "Heartbeat": {
        "type": "object",
        "required": ["predictor_id", "name", "host", "pid", "system", "execution_providers", "started_ns"],
        "properties": {
            "predictor_id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "new for each process"},
            "name": {"type": "string"}, "host": {"type": "string"}, "pid": _INTEGER, "started_ns": _INTEGER,
            "system": {"type": "object", "properties": {
                "fingerprint": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"}}},
            "execution_providers": {"type": "array", "items": {"type": "string"},
                                    "description": "framework/provider pairs, e.g. onnxruntime/cuda"},
            "labels": _STRING_MAP,
        },
    },
    "Predictor": {
        "type": "object", "additionalProperties": True,
        "description": "a predictor's latest heartbeat; alive: heard from recently",
        "properties": {"predictor_id": {"type": "string"}, "name": {"type": "string"},
                       "system": {"type": "string"}, "system_name": {"type": "string"},
                       "labels": _STRING_MAP, "seen_ns": _INTEGER, "alive": {"type": "boolean"}},
    },
    "JobRequest": {
        "type": "object", "required": ["manifests", "plan"],
        "properties": {
            "manifests": {"type": "array", "items": {"type": "object", "required": ["text"], "properties": {
                "source": {"type": "string"}, "text": {"type": "string", "description": "the manifest's YAML"}}}},
            "plan": {"type": "object", "required": ["frameworks", "batch_sizes"],
                     "description": "frameworks, batch_sizes, scenarios, levels, repetitions, warmup, accuracy, "
                                    "execution_provider, server_qps, server_bound_ms, seed"},
            "where": {**_STRING_MAP, "description": "system, name, host, predictor_id or a label: all must match"},
        },
    },
    "Job": {
        "type": "object", "additionalProperties": True,
        "properties": {"job_id": {"type": "string"}, "run_id": {"type": "string"}, "predictor_id": {"type": "string"},
                       "state": {"type": "string", "enum": [*JOB_STATES, "lost"]}, "message": {"type": "string"},
                       "results": _INTEGER, "created_ns": _INTEGER, "updated_ns": _INTEGER,
                       "request": {"type": "string", "description": "the JobRequest as JSON text (one job only)"}},
    },
    "StateChange": {
        "type": "object", "required": ["predictor_id", "state"],
        "properties": {"predictor_id": {"type": "string"}, "state": {"type": "string", "enum": list(JOB_STATES[1:])},
                       "message": {"type": "string"}, "results": _INTEGER},
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


def openapi_document() -> dict[str, Any]:
    list_params = [
        *(_query(name, {"type": "string"}, f"exact {name}") for name in TEXT_FILTERS),
        *(_query(name, _INTEGER, "nanoseconds") for name in NUMBER_FILTERS),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, "at most"),
    ]
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlscope query API", "version": "1"},
        "paths": {
            "/healthz": {"get": {"summary": "the process is up",
                                 "responses": {"200": _json({"type": "object"}, "ok")}}},
            "/readyz": {"get": {
                "summary": "the store answers (and the collector's status, when one runs here)",
                "responses": {"200": _json({"type": "object"}, "ready"), "503": _ERROR}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
            "/api/traces": {"get": {
                "summary": "traces, newest first", "parameters": list_params,
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "traces": {"type": "array", "items": _ref("TraceSummary")}}}, "trace summaries"),
                    "400": _ERROR}}},
            "/api/traces/{trace_id}": {"get": {
                "summary": "one trace's timeline",
                "parameters": [
                    _TRACE_ID,
                    _query("levels", {"type": "string"}, f"comma-separated subset of {', '.join(LEVELS)}"),
                    _query("raw", {"type": "string", "enum": ["0", "1", "true", "false"]},
                           "1: stored rows, no adjusters, no tree"),
                ],
                "responses": {"200": _json(_ref("Timeline"), "the timeline"), "400": _ERROR, "404": _ERROR}}},
            "/api/traces/{trace_id}/export": {"get": {
                "summary": "one trace in Jaeger UI JSON or Chrome/Perfetto trace-event JSON",
                "parameters": [_TRACE_ID, _query("format", {"type": "string", "enum": sorted(EXPORTERS)}, "")],
                "responses": {"200": _json({"type": "object"}, "the exported trace"), "400": _ERROR, "404": _ERROR}}},
            "/api/evaluations": {"get": {
                "summary": "evaluation results, by model, framework, batch size and scenario",
                "parameters": [
                    *(_query(name, {"type": "string"}, f"exact {name}") for name in EVALUATION_TEXT_FILTERS),
                    *(_query(name, _INTEGER, f"exact {name}") for name in EVALUATION_NUMBER_FILTERS),
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "evaluations": {"type": "array", "items": _ref("Evaluation")}}}, "evaluation rows"),
                    "400": _ERROR}}},
            "/api/predictors": {
                "post": {"summary": "a predictor's heartbeat (registers it)",
                         "requestBody": _body("Heartbeat"),
                         "responses": {"200": _json({"type": "object", "properties": {
                             "heartbeat_s": {"type": "number"}, "otlp_http_port": _INTEGER}}, "when to beat again"),
                             "400": _ERROR}},
                "get": {"summary": "predictors by their latest heartbeat",
                        "parameters": [_query("alive", {"type": "string", "enum": ["0", "1"]}, "1: alive ones only")],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "predictors": {"type": "array", "items": _ref("Predictor")}}}, "predictors")}}},
            "/api/jobs": {
                "post": {"summary": "queue an evaluation for every live predictor that matches `where`",
                         "requestBody": _body("JobRequest"),
                         "responses": {"201": _json({"type": "object", "properties": {
                             "run_id": {"type": "string"}, "jobs": {"type": "array", "items": {"type": "object"}}}},
                             "the jobs queued"), "400": _ERROR, "409": _ERROR}},
                "get": {"summary": "jobs, oldest first",
                        "parameters": [_query("run_id", {"type": "string"}, ""),
                                       _query("predictor_id", {"type": "string"}, ""),
                                       _query("state", {"type": "string", "enum": list(JOB_STATES)}, "stored state"),
                                       _query("latest", {"type": "integer", "minimum": 1},
                                              "only the latest N queued, newest first")],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "jobs": {"type": "array", "items": _ref("Job")}}}, "jobs"), "400": _ERROR}}},
            "/api/jobs/{job_id}": {"get": {
                "summary": "one job, with its request", "parameters": [_JOB_ID],
                "responses": {"200": _json(_ref("Job"), "the job"), "400": _ERROR, "404": _ERROR}}},
            "/api/jobs/{job_id}/state": {"post": {
                "summary": "its predictor moves a job on: queued -> running -> done | failed",
                "parameters": [_JOB_ID], "requestBody": _body("StateChange"),
                "responses": {"200": _json(_ref("Job"), "the job now, with its request"), "400": _ERROR,
                              "404": _ERROR, "409": _ERROR}}},
            "/api/sql": {"post": {
                "summary": "one read-only SQL statement, run under limits",
                "requestBody": _body("SqlRequest"),
                "responses": {"200": _json(_ref("SqlResult"), "the result"), "400": _ERROR, "503": _ERROR}}},
        },
        "components": {"schemas": SCHEMAS},
    }
