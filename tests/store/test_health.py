"""/readyz answers within a second whatever the store does: a paused clickhouse-server (the
test's own, SIGSTOPped) gets the last known state and its age, not a 20 s hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
from aiohttp import web

from mlscope.query import create_query_app
from mlscope.store import open_store
from mlscope.store.health import READY_DEADLINE_S


async def _ready(session: aiohttp.ClientSession, url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    async with session.get(url) as response:
        return response.status, await response.json(), time.monotonic() - started


async def test_readyz_answers_within_a_second_while_the_server_is_paused(clickhouse_server) -> None:
    store = await asyncio.to_thread(open_store, clickhouse_server.url)
    runner = web.AppRunner(create_query_app(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/readyz"
    try:
        async with aiohttp.ClientSession() as session:
            assert (await _ready(session, url))[0] == 200
            os.kill(clickhouse_server.process.pid, signal.SIGSTOP)
            try:
                answers = [await _ready(session, url) for _ in range(3)]
            finally:
                os.kill(clickhouse_server.process.pid, signal.SIGCONT)
            for status, body, took_s in answers:
                assert took_s < READY_DEADLINE_S + 0.5
                assert (status, body["status"]) == (200, "ready")  # the last state the store showed
            assert answers[-1][1]["store_state_age_s"] >= 2 * READY_DEADLINE_S
            async with asyncio.timeout(30):  # the hung ping ends once the server runs again
                while (await _ready(session, url))[1]["store_state_age_s"] >= READY_DEADLINE_S:
                    await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
        store.close()
