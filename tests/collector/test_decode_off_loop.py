"""A large request body is decoded in a worker thread, so that the event loop the collector shares
with the query API keeps answering (/healthz included) meanwhile; a small one is decoded inline.
The decode is held on an event rather than timed: inline, it would hold the loop until released."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from mlscope.collector import grpc_server, http_server
from mlscope.query import create_query_app
from mlscope.store import Store
from tests.collector.collector_testing import StartCollector, post, span_request
from tests.query.query_server import serve

INLINE_MAX_BYTES = 2_000
SMALL, LARGE = span_request(2), span_request(200)


async def test_healthz_answers_while_a_large_body_decodes(
        start_collector: StartCollector, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = await start_collector(decode_inline_max_bytes=INLINE_MAX_BYTES)
    runner, base_url = await serve(create_query_app(store))
    decoding, answered = threading.Event(), threading.Event()
    released: list[bool] = []
    decode = http_server.decode_body

    def held_decode(*args: object):
        decoding.set()
        released.append(answered.wait(timeout=30))  # never set if this held the loop
        return decode(*args)

    monkeypatch.setattr(http_server, "decode_body", held_decode)
    try:
        async with aiohttp.ClientSession() as session:
            sending = asyncio.create_task(post(session, f"http://127.0.0.1:{collector.http_port}/v1/traces",
                                               LARGE.SerializeToString()))
            assert await asyncio.to_thread(decoding.wait, 30)
            async with session.get(f"{base_url}/healthz") as health:
                assert health.status == 200
            answered.set()
            assert (await sending)[0] == 200
    finally:
        answered.set()
        await runner.cleanup()
    assert released == [True]
    assert len(LARGE.SerializeToString()) > INLINE_MAX_BYTES


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("request_message, off_loop", [(SMALL, False), (LARGE, True)], ids=["small", "large"])
async def test_only_a_body_past_the_inline_limit_leaves_the_loop(
        start_collector: StartCollector, monkeypatch: pytest.MonkeyPatch, protocol: str,
        request_message, off_loop: bool) -> None:
    collector = await start_collector(decode_inline_max_bytes=INLINE_MAX_BYTES)
    module = http_server if protocol == "http" else grpc_server
    decode, threads = module.decode_body, []

    def recorded_decode(*args: object):
        threads.append(threading.current_thread())
        return decode(*args)

    monkeypatch.setattr(module, "decode_body", recorded_decode)
    if protocol == "http":
        async with aiohttp.ClientSession() as session:
            status, _, _ = await post(session, f"http://127.0.0.1:{collector.http_port}/v1/traces",
                                      request_message.SerializeToString())
        assert status == 200
    else:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            await TraceServiceStub(channel).Export(request_message)
    (thread,) = threads
    assert (thread is not threading.current_thread(), thread.name.startswith("mlscope-decode")) == (off_loop, off_loop)


async def test_a_grpc_message_that_is_no_export_request_is_invalid_argument(start_collector: StartCollector) -> None:
    collector = await start_collector()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")  # bytes as given
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await export(b"\x0a\xff\xff\xff\xff")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportTraceServiceRequest" in refused.value.details()
