"""Trace listing parameters: validation and the SQL they become (run against both backends in
test_api.py)."""

from __future__ import annotations

import pytest

from mlscope.query.errors import BadRequest
from mlscope.query.listing import (
    DEFAULT_LIMIT, MAX_LIMIT, TraceFilter, encode_cursor, parse_trace_filter, trace_list_sql, trace_page,
)
from tests.query.trace_fixtures import MS, T0, insert, row


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
    assert sql.endswith("ORDER BY start_ns DESC, trace_id\nLIMIT 4")  # one more: is there a next page?


def test_search_parameters() -> None:
    cursor = encode_cursor(T0, "a" * 32)
    found = parse_trace_filter({"level": "layer", "status": "error", "name": "conv1", "cursor": cursor},
                               ["mlscope.model.name=resnet18", "k==v"])
    assert found == TraceFilter(level="layer", status="error", name="conv1", after=(T0, "a" * 32),
                                attributes=(("mlscope.model.name", "resnet18"), ("k", "=v")))


@pytest.mark.parametrize("params, attributes, message", [
    ({"level": "deep"}, [], "level must be one of"), ({"status": "bad"}, [], "status must be one of"),
    ({"cursor": "bm90IGEgY3Vyc29y"}, [], "cursor must be a next_cursor"), ({"cursor": "%%%"}, [], "cursor must be"),
    ({}, ["novalue"], "attr must be key=value"), ({}, ["=v"], "attr must be key=value"),
    ({}, ["k=v"] * 17, "at most 16 attr filters")])
def test_bad_search_parameters(params, attributes, message) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_trace_filter(params, attributes)


def test_span_filters_select_candidates_before_the_merge() -> None:
    sql = trace_list_sql(TraceFilter(attributes=(("k", "v"),), status="error", since_ns=T0))
    merge_from = sql.index("FROM trace_index")
    assert sql.index("SELECT trace_id FROM spans WHERE") > merge_from > 0
    assert sql.index("GROUP BY trace_id") > sql.index("status_code = 'error'")
    assert "day >= toDate(toDateTime(intDiv(" in sql


def test_a_full_page_has_a_cursor() -> None:
    rows = [{"trace_id": f"{i:032x}", "start_ns": 100 - i} for i in range(3)]
    assert trace_page(rows, TraceFilter(limit=3)) == (rows, None)
    assert trace_page(rows, TraceFilter(limit=2)) == (rows[:2], encode_cursor(99, f"{1:032x}"))


# --- over HTTP, both store backends -------------------------------------------------------------

def trace_rows(index: int, start_ms: float, **span: str) -> list[dict]:
    trace_id = f"{index:032x}"
    return [row(f"{index:015x}1", "", "run", start_ms, start_ms + 10, trace_id=trace_id),
            row(f"{index:015x}2", f"{index:015x}1", span.get("name", "predict"), start_ms + 1, start_ms + 9,
                span.get("level", "model"), trace_id=trace_id, attributes={"mlscope.batch_size": span.get("batch", "1")})]


@pytest.fixture
async def many(served):
    rows = [r for i in range(1, 8) for r in trace_rows(i, i * 20, batch=str(i % 2), name="predict" if i < 6 else "fit")]
    rows[-1] = dict(rows[-1], status_code="error")
    insert(served.store, rows)
    return served


async def test_search_filters_over_http(many) -> None:
    async def ids(query: str) -> list[int]:
        status, body = await many.get(f"/api/traces?{query}")
        assert status == 200, body
        return [int(trace["trace_id"], 16) for trace in body["traces"]]

    assert await ids("attr=mlscope.batch_size=1") == [7, 5, 3, 1]
    assert await ids("attr=mlscope.batch_size=1&name=fit") == [7]
    assert await ids("status=error") == [7]
    assert await ids("level=model&name=predict") == [5, 4, 3, 2, 1]
    assert await ids("level=layer") == []
    assert await ids(f"name=predict&since_ns={T0 + 40 * MS}&until_ns={T0 + 100 * MS}") == [4, 3, 2]


async def test_cursor_pages_through_everything_once(many) -> None:
    status, body = await many.get("/api/traces?limit=3")
    pages = [body]
    while body["next_cursor"]:
        status, body = await many.get(f"/api/traces?limit=3&cursor={body['next_cursor']}")
        assert status == 200
        pages.append(body)
    seen = [trace["trace_id"] for page in pages for trace in page["traces"]]
    assert [int(t, 16) for t in seen] == [7, 6, 5, 4, 3, 2, 1] and len(pages) == 3
    status, body = await many.get("/api/traces?limit=3&attr=mlscope.batch_size=0")
    assert [int(t["trace_id"], 16) for t in body["traces"]] == [6, 4, 2] and body["next_cursor"] is None
    assert (await many.get("/api/traces?cursor=nonsense"))[0] == 400
