"""The query API's slow steps on a whole trace (its timeline, the analysis, a diff: seconds on a
big trace) run in worker threads: while one is held, the app's loop answers other requests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from mlscope.query import api as query_api
from tests.query.query_server import Served
from tests.query.trace_fixtures import KNOWN, TRACE, insert

# Held on the loop, the step would keep it (and the test's own client, on the same loop) this long.
HOLD_S = 20.0


@pytest.mark.parametrize("path, step", [
    (f"/api/traces/{TRACE}/analysis", "build_timeline"),
    (f"/api/traces/{TRACE}/analysis", "analyze"),
    (f"/api/diff?a={TRACE}&b={TRACE}", "diff_timelines"),
    (f"/api/traces/{TRACE}/export?format=perfetto", "build_timeline"),
])
async def test_a_slow_step_leaves_the_loop_to_other_requests(served: Served, monkeypatch, path: str, step: str) -> None:
    insert(served.store, KNOWN)
    entered, release = threading.Event(), threading.Event()
    held_out: list[bool] = []
    real = getattr(query_api, step)

    def holding(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        held_out.append(not release.wait(HOLD_S))
        return real(*args, **kwargs)

    monkeypatch.setattr(query_api, step, holding)
    slow = asyncio.create_task(_status(served, path))
    assert await asyncio.to_thread(entered.wait, HOLD_S)
    assert await served.get("/healthz") == (200, {"status": "ok"})  # answered while the step is held
    release.set()
    assert await slow == 200
    assert held_out == [False]


async def _status(served: Served, path: str) -> int:
    async with served.session.get(path) as response:
        await response.read()
        return response.status
