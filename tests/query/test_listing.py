"""Trace listing parameters: validation and the SQL they become (run against both backends in
test_api.py)."""

from __future__ import annotations

import pytest

from mlscope.query.errors import BadRequest
from mlscope.query.listing import DEFAULT_LIMIT, MAX_LIMIT, TraceFilter, parse_trace_filter, trace_list_sql


def test_parameters_become_a_filter() -> None:
    params = {"service": "svc", "model": "resnet18", "framework": "", "since_ns": "10", "until_ns": "20",
              "min_duration_ns": "0", "limit": "5", "unknown": "ignored"}
    assert parse_trace_filter(params) == TraceFilter(
        service="svc", model="resnet18", since_ns=10, until_ns=20, min_duration_ns=0, limit=5)
    assert parse_trace_filter({}) == TraceFilter(limit=DEFAULT_LIMIT)


@pytest.mark.parametrize(
    "params, message",
    [({"since_ns": "yesterday"}, "since_ns must be an integer"), ({"until_ns": "1.5"}, "until_ns must be an integer"),
     ({"min_duration_ns": "-1"}, "must not be negative"), ({"limit": "0"}, f"between 1 and {MAX_LIMIT}"),
     ({"limit": str(MAX_LIMIT + 1)}, f"between 1 and {MAX_LIMIT}"), ({"limit": "1; DROP"}, "limit must be an integer")],
)
def test_bad_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_trace_filter(params)


def test_text_filters_are_quoted_literals() -> None:
    sql = trace_list_sql(TraceFilter(service="x' OR 1=1 --", limit=3))
    assert "service = 'x\\' OR 1=1 --'" in sql
    assert sql.endswith("ORDER BY start_ns DESC, trace_id\nLIMIT 3")
