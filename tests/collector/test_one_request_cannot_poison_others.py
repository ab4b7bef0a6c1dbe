"""Acknowledged spans are never lost to another client's request: a request spanning many
months shares a flush with innocent ones, and a spooled file the store refuses is split down to
the request it refuses, which alone is set aside (counted, shown in status, kept on disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.collector.collector_testing import StartCollector, post, span_ids, span_request
from mlscope.collector.spool import Spool, unframe
from mlscope.store import Columns, Store, StoreError

MONTH_NS = 31 * 86_400 * 10**9


async def test_a_request_spanning_150_months_shares_a_flush_with_innocent_ones(
    start_collector: StartCollector, store: Store, session: aiohttp.ClientSession
) -> None:
    wide = span_request(150)
    for index, span in enumerate(wide.resource_spans[0].scope_spans[0].spans):
        span.start_time_unix_nano -= index * MONTH_NS
        span.end_time_unix_nano = span.start_time_unix_nano + 10
    innocent = [span_request(5, service=f"innocent-{index}") for index in range(4)]
    # A long flush timer puts all five requests in one merged insert.
    collector = await start_collector(flush_interval_s=0.3)
    url = f"http://127.0.0.1:{collector.http_port}/v1/traces"

    answers = await asyncio.gather(*(post(session, url, request.SerializeToString()) for request in [wide, *innocent]))

    assert [status for status, _, _ in answers] == [200] * 5
    stored = (await asyncio.to_thread(store.execute, "SELECT span_id FROM spans")).rows
    assert sorted(row[0] for row in stored) == sorted(
        span_id for request in [wide, *innocent] for span_id in span_ids(request))
    status = collector.status()
    assert (status["spooled_bytes"], status["store_ok"], status["set_aside_spans"]) == (0, True, 0)


async def test_a_refused_spool_file_sets_aside_only_the_request_the_store_refuses(
    start_collector: StartCollector, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    innocent = [span_request(3), span_request(4), span_request(5)]
    poisoned = span_request(2, service="poisoned")
    with Spool(str(tmp_path / "spool"), max_bytes=2**20) as spool:
        spooled = spool.write("traces", [request.SerializeToString() for request in (innocent[0], poisoned, *innocent[1:])])
    inserting = store.insert

    def refusing_the_poisoned(table: str, columns: Columns) -> None:
        if "poisoned" in columns["service"]:
            raise StoreError("Too many partitions for single INSERT block", code=252)
        inserting(table, columns)

    monkeypatch.setattr(store, "insert", refusing_the_poisoned)
    collector = await start_collector(replay_interval_s=0.05)
    async with asyncio.timeout(10):
        while collector.status()["spooled_bytes"]:
            await asyncio.sleep(0.02)

    stored = (await asyncio.to_thread(store.execute, "SELECT span_id FROM spans")).rows
    assert sorted(row[0] for row in stored) == sorted(span_id for request in innocent for span_id in span_ids(request))
    status = collector.status()
    assert (status["set_aside_spans"], status["set_aside_files"], status["store_ok"]) == (2, 1, True)
    rejected = Path(f"{spooled.path}.rejected")
    assert unframe(rejected.read_bytes()) == [poisoned.SerializeToString()]
