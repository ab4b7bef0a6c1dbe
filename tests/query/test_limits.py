"""Bounded reads of the query service (issue 11, findings 6 and 8): a trace past the span cap is
answered 413 with the ways to read less, before any span is read; a request body that drips is
cut off at the body timeout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mlscope.listener import GuardedSite, ListenerLimits, listener_runner
from mlscope.query import create_query_app
from mlscope.query.traces import SpanCap
from mlscope.store import Store
from tests.query.query_server import Served, serve
from tests.query.trace_fixtures import KNOWN, TRACE, insert

CLOSED_WITHIN_S = 8.0  # for a 1 s timeout, on a loaded machine


@pytest.fixture
async def capped(store: Store) -> AsyncIterator[Served]:
    """KNOWN (5 spans) served with a cap of 4 spans per response (compact: 5)."""
    insert(store, KNOWN)
    runner, base_url = await serve(create_query_app(store, span_cap=SpanCap(full=4, compact=5)))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            yield Served(store, base_url, session)
    finally:
        await runner.cleanup()


async def test_a_trace_past_the_span_cap_is_a_413_naming_the_ways_to_read_less(capped: Served) -> None:
    status, body = await capped.get(f"/api/traces/{TRACE}")
    assert status == 413
    message = body["error"]
    assert "5 spans" in message and "(4)" in message
    for way in ("?levels=", "?max_depth=", "?start_ns=", "?format=compact", f"/api/traces/{TRACE}/window"):
        assert way in message
    for path in (f"/api/traces/{TRACE}/analysis", f"/api/traces/{TRACE}/export?format=perfetto",
                 f"/api/traces/{TRACE}?raw=1"):
        assert (await capped.get(path))[0] == 413


async def test_reads_within_the_cap_are_served(capped: Served) -> None:
    status, body = await capped.get(f"/api/traces/{TRACE}?format=compact")  # 5 spans, compact cap 5
    assert status == 200 and len(body["span_id"]) == 5
    status, body = await capped.get(f"/api/traces/{TRACE}?levels=application")  # 2 kept
    assert status == 200 and len(body["spans"]) == 2
    status, body = await capped.get(f"/api/traces/{TRACE}?max_depth=0")
    assert status == 200 and len(body["spans"]) == 1
    assert (await capped.get(f"/api/traces/{TRACE}/window"))[0] == 200


async def test_a_filtered_read_keeping_more_than_the_cap_is_a_413(store: Store) -> None:
    insert(store, KNOWN)
    runner, base_url = await serve(create_query_app(store, span_cap=SpanCap(full=2, compact=2)))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            async with session.get(f"/api/traces/{TRACE}?levels=application,model&format=compact") as response:
                assert response.status == 413  # 3 kept
                assert "?format=compact" not in (await response.json())["error"]  # already compact
    finally:
        await runner.cleanup()


async def test_a_dripping_body_and_a_dripping_head_are_cut_off(store: Store) -> None:
    limits = ListenerLimits(header_timeout_s=1, body_timeout_s=1, max_connections=20)
    runner = listener_runner(create_query_app(store, body_timeout_s=limits.body_timeout_s), limits, access_log=None)
    await runner.setup()
    try:
        await GuardedSite(runner, "127.0.0.1", 0, limits.max_connections).start()
        port = runner.addresses[0][1]
        body_reader, body_writer = await asyncio.open_connection("127.0.0.1", port)
        body_writer.write(b"POST /api/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{")
        head_reader, head_writer = await asyncio.open_connection("127.0.0.1", port)
        head_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
        for reader in (body_reader, head_reader):
            assert await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S) == b""
        assert time.monotonic() - started < CLOSED_WITHIN_S
        body_writer.close()
        head_writer.close()
    finally:
        await runner.cleanup()


async def _raw_answer(port: int, request: bytes) -> bytes:
    """What the server answers to `request` sent as is, up to its closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)
    finally:
        writer.close()


async def test_a_line_past_aiohttps_limit_is_a_json_400_quoting_nothing(store: Store) -> None:
    """aiohttp refuses a request line or header line over 8,190 bytes before any middleware runs;
    the answer is still JSON like the API's other errors, the input is not quoted back, and the
    port goes on serving."""
    limits = ListenerLimits(max_connections=20)
    runner = listener_runner(create_query_app(store), limits, access_log=None)
    await runner.setup()
    try:
        await GuardedSite(runner, "127.0.0.1", 0, limits.max_connections).start()
        port = runner.addresses[0][1]
        marker = "hostile" * 2000  # 14,000 bytes
        for request in (f"GET /api/traces?service={marker} HTTP/1.1\r\nHost: x\r\n\r\n",
                        f"GET /api/traces HTTP/1.1\r\nHost: x\r\nX-Long: {marker}\r\n\r\n",
                        f"GET /healthz HTTP/1.1\r\nHost: x\r\n{marker}: 1\r\n\r\n"):
            answer = await _raw_answer(port, request.encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400" and b"Content-Type: application/json;" in head
            assert json.loads(body) == {"error": "a request line or header line is longer than this server reads"}
            assert b"hostile" not in answer
        answer = await _raw_answer(port, b"NOT HTTP AT ALL\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400" and json.loads(body) == {"error": "the request is not valid HTTP/1.1"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
