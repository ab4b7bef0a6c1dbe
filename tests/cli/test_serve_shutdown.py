"""Stopping `mlscope serve` (issue 11): a client holding a connection with its request body half
sent does not hold the shutdown (nothing of its request was acknowledged: its connection is cut
at once), and a handler still running is given at most the body timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from mlscope.cli.main import _serve
from mlscope.listener import GuardedSite, ListenerLimits, add_body_deadline, listener_runner
from mlscope.store import open_store

HOST = "127.0.0.1"
LONG_S = 120.0  # a body timeout no test run comes near
STOPPED_WITHIN_S = 20.0  # generous: the machine may be loaded


async def _half_sent(port: int, head: bytes) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(head)
    await writer.drain()
    return writer


async def test_a_signal_stops_serve_without_waiting_for_half_sent_bodies(tmp_path: Path) -> None:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    try:
        ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(_serve(store, HOST, 0, 0, None, str(tmp_path / "spool"),
                                             on_ready=ready.set_result, no_dispatch=True,
                                             limits=ListenerLimits(body_timeout_s=LONG_S)))
        ports = await asyncio.wait_for(ready, 60)
        held = [
            await _half_sent(ports["otlp-http"], b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n\x0a"),
            await _half_sent(ports["http"], b"POST /api/sql HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"),
        ]
        await asyncio.sleep(0.5)  # both handlers are reading their bodies
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, STOPPED_WITHIN_S)
        assert time.monotonic() - started < STOPPED_WITHIN_S
        for writer in held:
            writer.close()
    finally:
        store.close()


async def test_a_running_handler_holds_the_shutdown_at_most_the_body_timeout() -> None:
    never = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    add_body_deadline(app, 1.0)
    app.router.add_get("/stuck", stuck)
    limits = ListenerLimits(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=10)
    runner = listener_runner(app, limits, access_log=None)
    await runner.setup()
    await GuardedSite(runner, HOST, 0, limits.max_connections).start()
    writer = await _half_sent(runner.addresses[0][1], b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.wait_for(runner.cleanup(), STOPPED_WITHIN_S)  # aiohttp's default waits 60 s
    assert time.monotonic() - started < STOPPED_WITHIN_S
    writer.close()
