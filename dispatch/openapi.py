"""Dispatch's part of /openapi.json: its paths (under the prefix it is mounted at) and schemas."""

from __future__ import annotations

from typing import Any

from mlscope.query.openapi import ERROR, INTEGER, STRING_MAP, json_body_of, json_content, query_param, ref

from .core import JOB_STATES

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}

SCHEMAS: dict[str, Any] = {
    "Heartbeat": {
        "type": "object",
        "required": ["predictor_id", "name", "host", "pid", "system", "execution_providers", "started_ns"],
        "properties": {
            "predictor_id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "new for each process"},
            "name": {"type": "string"}, "host": {"type": "string"}, "pid": INTEGER, "started_ns": INTEGER,
            "system": {"type": "object", "properties": {
                "fingerprint": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"}}},
            "execution_providers": {"type": "array", "items": {"type": "string"},
                                    "description": "framework/provider pairs, e.g. onnxruntime/cuda"},
            "labels": STRING_MAP,
        },
    },
    "Predictor": {
        "type": "object", "additionalProperties": True,
        "description": "a predictor's latest heartbeat; alive: heard from recently",
        "properties": {"predictor_id": {"type": "string"}, "name": {"type": "string"},
                       "system": {"type": "string"}, "system_name": {"type": "string"},
                       "labels": STRING_MAP, "seen_ns": INTEGER, "alive": {"type": "boolean"}},
    },
    "JobRequest": {
        "type": "object", "required": ["manifests", "plan"],
        "properties": {
            "manifests": {"type": "array", "items": {"type": "object", "required": ["text"], "properties": {
                "source": {"type": "string"}, "text": {"type": "string", "description": "the manifest's YAML"}}}},
            "plan": {"type": "object", "required": ["frameworks", "batch_sizes"],
                     "description": "frameworks, batch_sizes, scenarios, levels, repetitions, warmup, accuracy, "
                                    "execution_provider, server_qps, server_bound_ms, seed"},
            "where": {**STRING_MAP, "description": "system, name, host, predictor_id or a label: all must match"},
        },
    },
    "Job": {
        "type": "object", "additionalProperties": True,
        "properties": {"job_id": {"type": "string"}, "run_id": {"type": "string"}, "predictor_id": {"type": "string"},
                       "state": {"type": "string", "enum": [*JOB_STATES, "lost"]}, "message": {"type": "string"},
                       "results": INTEGER, "created_ns": INTEGER, "updated_ns": INTEGER,
                       "request": {"type": "string", "description": "the JobRequest as JSON text (one job only)"}},
    },
    "StateChange": {
        "type": "object", "required": ["predictor_id", "state"],
        "properties": {"predictor_id": {"type": "string"}, "state": {"type": "string", "enum": list(JOB_STATES[1:])},
                       "message": {"type": "string"}, "results": INTEGER},
    },
}

PATHS: dict[str, Any] = {
    "/api/predictors": {
        "post": {"summary": "a predictor's heartbeat (registers it)",
                 "requestBody": json_body_of("Heartbeat"),
                 "responses": {"200": json_content({"type": "object", "properties": {
                     "heartbeat_s": {"type": "number"}, "otlp_http_port": INTEGER}}, "when to beat again"),
                     "400": ERROR}},
        "get": {"summary": "predictors by their latest heartbeat",
                "parameters": [query_param("alive", {"type": "string", "enum": ["0", "1"]}, "1: alive ones only")],
                "responses": {"200": json_content({"type": "object", "properties": {
                    "predictors": {"type": "array", "items": ref("Predictor")}}}, "predictors")}}},
    "/api/jobs": {
        "post": {"summary": "queue an evaluation for every live predictor that matches `where`",
                 "requestBody": json_body_of("JobRequest"),
                 "responses": {"201": json_content({"type": "object", "properties": {
                     "run_id": {"type": "string"}, "jobs": {"type": "array", "items": {"type": "object"}}}},
                     "the jobs queued"), "400": ERROR, "409": ERROR}},
        "get": {"summary": "jobs, oldest first",
                "parameters": [query_param("run_id", {"type": "string"}, ""),
                               query_param("predictor_id", {"type": "string"}, ""),
                               query_param("state", {"type": "string", "enum": list(JOB_STATES)}, "stored state"),
                               query_param("latest", {"type": "integer", "minimum": 1},
                                      "only the latest N queued, newest first")],
                "responses": {"200": json_content({"type": "object", "properties": {
                    "jobs": {"type": "array", "items": ref("Job")}}}, "jobs"), "400": ERROR}}},
    "/api/jobs/{job_id}": {"get": {
        "summary": "one job, with its request", "parameters": [_JOB_ID],
        "responses": {"200": json_content(ref("Job"), "the job"), "400": ERROR, "404": ERROR}}},
    "/api/jobs/{job_id}/state": {"post": {
        "summary": "its predictor moves a job on: queued -> running -> done | failed",
        "parameters": [_JOB_ID], "requestBody": json_body_of("StateChange"),
        "responses": {"200": json_content(ref("Job"), "the job now, with its request"), "400": ERROR,
                      "404": ERROR, "409": ERROR}}},
}
