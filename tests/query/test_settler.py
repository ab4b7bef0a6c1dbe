"""The settler: which big traces it fills and when (pure), and on both backends that a quiet
trace gets its window cache without any windowed read, that the next read uses that fill, and
that a trace that grew is filled again once quiet."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import replace

import aiohttp

from mlscope.query import create_query_app
from mlscope.query.api import COMPACT_CACHE
from mlscope.query.reader import TraceReader
from mlscope.query.settler import Seen, Settler, SettlerPolicy, settle, warms
from mlscope.store import Store
from tests.query.query_server import serve
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, columns_of, row


def test_a_trace_is_ready_once_its_count_has_stayed_the_same_for_the_quiet_period() -> None:
    first = settle({"a": 10}, {}, now_s=100.0, quiet_s=5.0)
    assert first.seen == {"a": Seen(10, 100.0)} and first.ready == []
    assert settle({"a": 10}, first.seen, now_s=104.9, quiet_s=5.0).ready == []
    assert settle({"a": 10}, first.seen, now_s=105.0, quiet_s=5.0).ready == [("a", 10)]


def test_a_trace_that_grew_waits_again_and_a_filled_one_is_forgotten() -> None:
    seen = {"a": Seen(10, 100.0), "b": Seen(7, 90.0)}
    settled = settle({"a": 12}, seen, now_s=120.0, quiet_s=5.0)
    assert settled.seen == {"a": Seen(12, 120.0)} and settled.ready == []
    assert settle({"a": 12}, settled.seen, now_s=125.0, quiet_s=5.0).ready == [("a", 12)]


def test_the_longest_quiet_go_first_and_a_failed_fill_waits_for_its_retry_time() -> None:
    seen = {"late": Seen(5, 50.0), "early": Seen(9, 10.0), "busy": Seen(3, 99.0)}
    unfilled = {"late": 5, "early": 9, "busy": 3}
    assert settle(unfilled, seen, now_s=100.0, quiet_s=5.0).ready == [("early", 9), ("late", 5)]
    held = {("early", 9): 130.0, ("late", 4): 500.0}  # a failure at another count holds nothing back
    assert settle(unfilled, seen, now_s=100.0, quiet_s=5.0, held_back=held).ready == [("late", 5)]
    assert settle(unfilled, seen, now_s=130.0, quiet_s=5.0, held_back=held).ready == [("early", 9), ("late", 5), ("busy", 3)]


SMALL_TRACE = "0" * 31 + "5"
POLICY = SettlerPolicy(min_spans=len(KNOWN), quiet_s=0.3, poll_s=0.05)


async def _fills(store: Store, span_count: int) -> list[tuple[str, int]]:
    """(trace, fill id) of the complete fills (pyramid built) for `span_count` rows, once there is one (polled)."""
    deadline = time.monotonic() + 60
    while True:
        rows = await asyncio.to_thread(store.execute, "SELECT trace_id, fill FROM span_depth_fills "
                                       f"WHERE span_count = {span_count} AND pyramid_pending = 0 ORDER BY trace_id, fill")
        if rows.rows:
            return [(str(trace_id), int(fill)) for trace_id, fill in rows.rows]
        assert time.monotonic() < deadline, f"no fill for {span_count} rows after 60 s"
        await asyncio.sleep(0.05)


async def test_a_quiet_big_trace_is_filled_without_a_read_and_again_once_it_grew(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    store.insert("span_rows", columns_of([row("00000000000000f1", "", "small", 0, 1, trace_id=SMALL_TRACE)]))
    runner, base_url = await serve(create_query_app(store, fill_window_caches=POLICY))
    try:
        [(trace, fill)] = await _fills(store, len(KNOWN))
        assert trace == TRACE
        window = f"{base_url}/api/traces/{TRACE}/window?start_ns={T0}&end_ns={T0 + 100 * MS}"
        async with aiohttp.ClientSession() as session, session.get(window) as response:
            assert response.status == 200
            assert sum(entry["count"] for entry in (await response.json())["entries"]) == len(KNOWN)
        assert await _fills(store, len(KNOWN)) == [(TRACE, fill)]  # the read used it, filled nothing
        store.insert("span_rows", columns_of([row("00000000000000e6", "00000000000000d5", "late", 91, 94)]))
        [(trace, grown)] = await _fills(store, len(KNOWN) + 1)
        assert trace == TRACE and grown > fill
    finally:
        await runner.cleanup()
    # Under the threshold: never filled.
    assert store.execute(f"SELECT count() FROM span_depth_fills WHERE trace_id = '{SMALL_TRACE}'").rows == [(0,)]


def test_a_trace_the_viewer_reads_whole_gets_its_answer_made_after_its_fill() -> None:
    policy = SettlerPolicy(warm_max_spans=10)
    assert warms(10, policy) and warms(1, policy) and not warms(11, policy)


def test_the_settler_warms_what_it_filled_up_to_the_viewers_size_only(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    warmed: list[tuple[str, int]] = []

    def settler(warm_max_spans: int) -> Settler:
        return Settler(TraceReader(store), replace(POLICY, quiet_s=0.0, warm_max_spans=warm_max_spans),
                       warm=lambda *made: warmed.append(made))

    over = settler(len(KNOWN) - 1)
    assert over.poll() == [(TRACE, len(KNOWN))]
    assert over.fill(TRACE, len(KNOWN))
    over.warm(TRACE, len(KNOWN))
    assert warmed == []
    within = settler(len(KNOWN))
    assert not within.fill(TRACE, len(KNOWN) + 1)  # not its count: nothing filled, nothing to warm
    assert within.fill(TRACE, len(KNOWN))
    within.warm(TRACE, len(KNOWN))
    assert warmed == [(TRACE, len(KNOWN))]


async def test_a_quiet_trace_is_opened_from_the_cache_the_settler_warmed(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    app = create_query_app(store, fill_window_caches=POLICY)
    runner, base_url = await serve(app)
    try:
        key, deadline = (TRACE, len(KNOWN)), time.monotonic() + 60
        while (warmed := app[COMPACT_CACHE].get(key)) is None:
            assert time.monotonic() < deadline, "no compact answer warmed after 60 s"
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session, session.get(
                f"{base_url}/api/traces/{TRACE}?format=compact&max_spans=200000") as response:
            assert response.status == 200
            body = await response.json()
        assert app[COMPACT_CACHE].get(key) is warmed  # answered from it, not read and put again
        assert json.loads(gzip.decompress(warmed)) == body and len(body["span_id"]) == len(KNOWN)
    finally:
        await runner.cleanup()
