"""`served`: the query app over the `store` fixture (both backends) on a real server, with a
client session pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from mlscope.query import SqlLimits, create_query_app
from mlscope.store import Store
from tests.query.query_server import COLLECTOR_STATUS, SQL_MAX_ROWS, Served, serve


@pytest.fixture
async def served(store: Store) -> AsyncIterator[Served]:
    app = create_query_app(store, lambda: COLLECTOR_STATUS, sql_limits=SqlLimits(max_rows=SQL_MAX_ROWS))
    runner, base_url = await serve(app)
    try:
        async with aiohttp.ClientSession(base_url) as session:
            yield Served(store, base_url, session)
    finally:
        await runner.cleanup()
