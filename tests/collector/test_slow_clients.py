"""Slow and numerous clients against a real collector (issue 11, finding 8): slowloris heads and
bodies are cut off at their timeouts, connections past the limit are turned away with a 503, and
meanwhile a normal client is served. One backend is enough: nothing here reaches the store's
behaviour."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from mlscope.collector import Collector
from mlscope.listener import GuardedSite, ListenerLimits, listener_runner
from mlscope.query import create_query_app
from mlscope.store import Store, open_store
from tests.collector.collector_testing import PROTOBUF, quick_config, span_request

# Generous waits: the machine may be loaded; a timeout of 1 s must close within this many.
CLOSED_WITHIN_S = 8.0


@pytest.fixture
def embedded_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    yield store
    store.close()


async def _start(store: Store, tmp_path: Path, limits: ListenerLimits) -> Collector:
    collector = Collector(store, quick_config(tmp_path, listener=limits))
    await collector.start()
    return collector


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing (b'' when it just closed); waits up to CLOSED_WITHIN_S."""
    received = b""
    while chunk := await asyncio.wait_for(reader.read(4096), CLOSED_WITHIN_S):
        received += chunk
    return received


async def _export_ok(port: int) -> None:
    body = span_request(3).SerializeToString()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=body,
                                headers={"Content-Type": PROTOBUF}) as response:
            assert response.status == 200, await response.text()


async def test_slow_heads_and_bodies_are_cut_off_while_a_normal_request_succeeds(
        embedded_store: Store, tmp_path: Path) -> None:
    collector = await _start(embedded_store, tmp_path, ListenerLimits(header_timeout_s=1, body_timeout_s=1))
    try:
        slow_heads = [await _open(collector.http_port) for _ in range(5)]
        slow_bodies = [await _open(collector.http_port) for _ in range(5)]
        for _, writer in slow_heads:
            writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        for _, writer in slow_bodies:
            writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                         b"Content-Length: 1000\r\n\r\n\x0a")  # 1 of 1,000 bytes
        started = time.monotonic()
        await _export_ok(collector.http_port)  # a normal client meanwhile
        for reader, writer in [*slow_heads, *slow_bodies]:
            writer.write(b"X")  # still dripping
            assert await _closed_by_server(reader) == b""
            writer.close()
        assert time.monotonic() - started < CLOSED_WITHIN_S
        await _export_ok(collector.http_port)
    finally:
        await collector.stop()


async def test_connections_past_the_limit_are_turned_away_while_healthz_answers(
        embedded_store: Store, tmp_path: Path) -> None:
    """As `mlscope serve` runs them: each port has its own limit, so a flood of one leaves the
    query port (/healthz) answering, and the flooded port serves again once the flood ends."""
    limits = ListenerLimits(max_connections=20)
    collector = await _start(embedded_store, tmp_path, limits)
    api = listener_runner(create_query_app(embedded_store), limits, access_log=None)
    await api.setup()
    try:
        await GuardedSite(api, "127.0.0.1", 0, limits.max_connections).start()
        held = [await _open(collector.http_port) for _ in range(limits.max_connections)]
        await asyncio.sleep(0.2)  # let the server register them
        turned_away = [await _open(collector.http_port) for _ in range(5)]
        for reader, writer in turned_away:
            answer = await _closed_by_server(reader)
            assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
            writer.close()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{api.addresses[0][1]}/healthz") as response:
                assert response.status == 200
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.5)
        await _export_ok(collector.http_port)
    finally:
        await api.cleanup()
        await collector.stop()


async def test_a_grpc_connection_that_never_handshakes_is_closed(embedded_store: Store, tmp_path: Path) -> None:
    collector = await _start(embedded_store, tmp_path, ListenerLimits(header_timeout_s=1))
    try:
        reader, writer = await _open(collector.grpc_port)
        writer.write(b"PRI * HTTP/2.0\r\n")  # half an HTTP/2 preface, then nothing
        started = time.monotonic()
        await _closed_by_server(reader)
        assert time.monotonic() - started < CLOSED_WITHIN_S
        writer.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            await stub.Export(span_request(2), timeout=30)
    finally:
        await collector.stop()


async def test_a_line_past_aiohttps_limit_is_a_status_quoting_nothing(embedded_store: Store, tmp_path: Path) -> None:
    """On the OTLP port the refusal aiohttp makes before any handler runs is a google.rpc.Status
    in JSON, as the collector's other errors whose encoding is unknown; the port goes on serving."""
    collector = await _start(embedded_store, tmp_path, ListenerLimits())
    try:
        reader, writer = await _open(collector.http_port)
        writer.write(f"POST /v1/traces?{'hostile' * 2000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = await _closed_by_server(reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400" and b"Content-Type: application/json;" in head
        assert json.loads(body) == {"code": 3, "message": "a request line or header line is longer than this server reads"}
        assert b"hostile" not in answer
        await _export_ok(collector.http_port)
    finally:
        await collector.stop()
