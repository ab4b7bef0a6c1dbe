"""Serving the query app for tests: a real aiohttp server on 127.0.0.1 with an OS-chosen port,
and a small client for the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from mlscope.store import Store

# What the `served` fixture configures, for tests to check against.
SQL_MAX_ROWS = 50
COLLECTOR_STATUS = {"pending_spans": 0, "store_ok": True}


@dataclass(frozen=True)
class Served:
    store: Store
    base_url: str
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(path) as response:
            return response.status, await response.json()

    async def sql(self, query: Any) -> tuple[int, Any]:
        async with self.session.post("/api/sql", json={"query": query}) as response:
            return response.status, await response.json()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Starts `app`; returns its runner (to clean up) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
