"""Rows for the Jaeger API tests: the known trace (service svc) and a later one (service web)."""

from __future__ import annotations

from tests.query.trace_fixtures import KNOWN, row

LATER = "0000000000000000000000000000beef"
TRACE_ROWS = KNOWN + [
    row("00000000000000e1", "", "serve-request", 200, 205, trace_id=LATER, service="web",
        attributes={"mlscope.model.name": "bert"}),
    row("00000000000000e2", "00000000000000e1", "tokenize", 201, 202, "model", trace_id=LATER, service="web"),
]
