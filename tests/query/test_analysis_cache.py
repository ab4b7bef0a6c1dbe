"""GET /api/traces/{id}/analysis is made once per trace content (its rows and the metric samples
it covers) and kept by the app; the settler's app makes it before anyone asks. Both backends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp

from mlscope.query import SettlerPolicy, create_query_app
from mlscope.query import api as query_api
from mlscope.store import Store
from tests.query.query_server import Served, serve
from tests.query.test_counters import insert_samples
from tests.query.trace_fixtures import KNOWN, TRACE, insert, row

ANALYSIS = f"/api/traces/{TRACE}/analysis"


def _counting(monkeypatch) -> list[str]:
    """The trace ids the app analyses from now on."""
    made: list[str] = []
    real = query_api.analyze

    def analyze(timeline: Any, *args: Any) -> Any:
        made.append(timeline.trace_id)
        return real(timeline, *args)

    monkeypatch.setattr(query_api, "analyze", analyze)
    return made


async def test_an_unchanged_trace_is_analysed_once_and_again_when_it_changes(served: Served, monkeypatch) -> None:
    insert(served.store, KNOWN)
    made = _counting(monkeypatch)
    first = await served.get(ANALYSIS)
    assert first[0] == 200 and await served.get(ANALYSIS) == first and made == [TRACE]
    insert(served.store, [row("00000000000000e6", "00000000000000d5", "late", 91, 94)])
    grown = await served.get(ANALYSIS)
    assert made == [TRACE] * 2 and "00000000000000e6" in str(grown[1]) and "00000000000000e6" not in str(first[1])
    insert_samples(served.store, [("svc", "system.cpu.utilization", "1", 50, 0.5, {})])
    sampled = await served.get(ANALYSIS)
    assert made == [TRACE] * 3 and sampled[1]["hardware"] != grown[1]["hardware"]
    async with served.session.get(ANALYSIS, headers={"Accept-Encoding": "identity"}) as response:
        assert response.headers.get("Content-Encoding") is None and await response.json() == sampled[1]
    assert made == [TRACE] * 3


async def test_a_trace_holding_copies_is_analysed_at_each_read(served: Served, monkeypatch) -> None:
    # A retry's copy not merged yet: as many rows could later stand for other spans.
    served.store.execute("SYSTEM STOP MERGES span_rows")
    insert(served.store, KNOWN)
    insert(served.store, KNOWN[:1])
    assert served.store.execute(f"SELECT count() FROM span_rows WHERE trace_id = '{TRACE}'").rows == [(len(KNOWN) + 1,)]
    made = _counting(monkeypatch)
    assert (await served.get(ANALYSIS))[0] == (await served.get(ANALYSIS))[0] == 200
    assert made == [TRACE] * 2


async def test_the_settlers_app_analyses_a_quiet_trace_before_it_is_asked(store: Store, monkeypatch) -> None:
    insert(store, KNOWN)
    made = _counting(monkeypatch)
    policy = SettlerPolicy(min_spans=len(KNOWN), quiet_s=0.2, poll_s=0.05)
    runner, base = await serve(create_query_app(store, fill_window_caches=policy))
    try:
        for _ in range(1200):
            if made:
                break
            await asyncio.sleep(0.05)
        assert made == [TRACE]
        async with aiohttp.ClientSession(base) as session:
            assert (await Served(store, base, session).get(ANALYSIS))[0] == 200
        assert made == [TRACE]
    finally:
        await runner.cleanup()


async def test_pages_asking_at_once_wait_for_one_analysis(served: Served, monkeypatch) -> None:
    insert(served.store, KNOWN)
    made, entered, release = [], threading.Event(), threading.Event()
    real = query_api.analyze

    def analyze(timeline: Any, *args: Any) -> Any:
        made.append(timeline.trace_id)
        entered.set()
        release.wait(30)
        return real(timeline, *args)

    monkeypatch.setattr(query_api, "analyze", analyze)
    asking = [asyncio.create_task(served.get(ANALYSIS)) for _ in range(3)]
    assert await asyncio.to_thread(entered.wait, 30)
    await asyncio.sleep(0.3)  # the other two reach the cache meanwhile (else they find it filled)
    release.set()
    answers = await asyncio.gather(*asking)
    assert made == [TRACE] and answers[0][0] == 200 and answers.count(answers[0]) == 3
