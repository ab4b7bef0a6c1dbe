"""Query parameters a hostile client sends (issue 11): a value outside what a filter means and a
parameter given twice are a 400 naming the parameter, as JSON, on every route that parses
parameters (the query API's, Jaeger's and dispatch's), never a 200 for a guess nor a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from mlscope.dispatch import Dispatcher, dispatch_mount
from mlscope.query import create_query_app
from mlscope.store import Store
from tests.query.query_server import serve
from tests.query.trace_fixtures import KNOWN, TRACE, insert

TOO_BIG = "9" * 40  # past UInt64: the store cannot compare with it


@pytest.fixture
async def session(store: Store) -> AsyncIterator[aiohttp.ClientSession]:
    insert(store, KNOWN)
    runner, base_url = await serve(create_query_app(store, mounts=[dispatch_mount(Dispatcher(store))]))
    try:
        async with aiohttp.ClientSession(base_url) as client:
            yield client
    finally:
        await runner.cleanup()


async def _error(session: aiohttp.ClientSession, path: str) -> tuple[int, str]:
    """The status and error message (Jaeger's routes answer in Jaeger's shape: errors[0].msg)."""
    async with session.get(path) as response:
        assert response.content_type == "application/json"
        body = await response.json()
        return response.status, body["error"] if "error" in body else body["errors"][0]["msg"]


@pytest.mark.parametrize(("path", "error"), [
    ("/api/evaluations?conflict=2", "conflict must be 0 or 1, not '2'"),
    ("/api/evaluations?conflict=-1", "conflict must be 0 or 1, not '-1'"),
    (f"/api/evaluations?batch_size={TOO_BIG}", "batch_size must be at most 18446744073709551615"),
    (f"/api/traces?since_ns={TOO_BIG}", "since_ns must be at most"),
    (f"/api/traces?until_ns={TOO_BIG}", "until_ns must be at most"),
    (f"/api/traces?min_duration_ns={TOO_BIG}", "min_duration_ns must be at most"),
    (f"/jaeger/api/traces?service=s&start={TOO_BIG}", "start must be at most"),
    (f"/api/traces/{TRACE}?raw=2", "raw must be 0 or 1"),
    ("/api/predictors?alive=2", "alive must be 0 or 1"),
])
async def test_a_number_outside_its_meaning_is_a_400(session: aiohttp.ClientSession, path: str, error: str) -> None:
    status, message = await _error(session, path)
    assert status == 400 and error in message


async def test_a_yes_no_filter_takes_0_and_1(session: aiohttp.ClientSession) -> None:
    for value in ("0", "1"):
        async with session.get(f"/api/evaluations?conflict={value}") as response:
            assert response.status == 200


@pytest.mark.parametrize(("path", "name"), [
    ("/api/evaluations?model=a&model=b", "model"),
    ("/api/evaluations?conflict=0&conflict=1", "conflict"),
    ("/api/traces?service=a&service=b", "service"),
    ("/api/traces?limit=5&limit=5", "limit"),
    ("/api/traces?attr=k%3D1&cursor=x&cursor=y", "cursor"),
    (f"/api/traces/{TRACE}?levels=model&levels=layer", "levels"),
    (f"/api/traces/{TRACE}?raw=1&raw=0", "raw"),
    (f"/api/traces/{TRACE}/window?pixels=10&pixels=20", "pixels"),
    (f"/api/traces/{TRACE}/search?q=a&q=b", "q"),
    (f"/api/traces/{TRACE}/export?format=perfetto&format=jaeger", "format"),
    (f"/api/diff?a={TRACE}&a={TRACE}&b={TRACE}", "a"),
    ("/jaeger/api/traces?service=a&service=b", "service"),
    ("/api/jobs?state=queued&state=done", "state"),
    ("/api/predictors?alive=1&alive=0", "alive"),
])
async def test_a_parameter_given_twice_is_a_400_naming_it(session: aiohttp.ClientSession, path: str,
                                                            name: str) -> None:
    status, message = await _error(session, path)
    assert status == 400 and f"parameter {name!r} is given 2 times" in message


async def test_attr_alone_may_repeat(session: aiohttp.ClientSession) -> None:
    async with session.get("/api/traces?attr=k%3D1&attr=j%3D2") as response:
        assert response.status == 200
