"""GET /api/traces/{id}?format=compact as sent: gzip when the client accepts it (the same JSON
as without), kept per app by the trace's row count so that a re-open is not read again yet a
trace that grew is, and max_spans (a viewer's cue to read windows instead) answered before any
span is read. Both backends."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from mlscope.query.api import EncodedCache, accepts_gzip
from mlscope.query.reader import TraceReader
from mlscope.query.settler import SettlerPolicy
from mlscope.query.windows import pyramids_built
from tests.query.query_server import Served
from tests.query.trace_fixtures import KNOWN, TRACE, insert, row

COMPACT = f"/api/traces/{TRACE}?format=compact"
LATE = row("00000000000000e6", "00000000000000a1", "late", 96, 99, "application")


async def raw_get(api: Served, path: str, accept_encoding: str) -> tuple[int, dict[str, str], bytes]:
    async with api.session.get(path, headers={"Accept-Encoding": accept_encoding}, auto_decompress=False) as response:
        return response.status, dict(response.headers), await response.read()


async def test_compact_is_gzip_when_accepted_and_the_same_json_when_not(served: Served) -> None:
    insert(served.store, KNOWN)
    status, headers, zipped = await raw_get(served, COMPACT, "gzip, deflate")
    assert (status, headers["Content-Encoding"], headers["Vary"]) == (200, "gzip", "Accept-Encoding")
    status, headers, plain = await raw_get(served, COMPACT, "identity")
    assert status == 200 and "Content-Encoding" not in headers
    assert gzip.decompress(zipped) == plain
    body = json.loads(plain)
    assert [body["strings"][i] for i in body["name"]] == ["pipeline", "predict", "conv1", "relu", "postprocess"]


async def test_a_reopen_is_the_same_answer_and_a_trace_that_grew_is_read_again(served: Served) -> None:
    insert(served.store, KNOWN)
    first = await served.get(COMPACT)
    assert await served.get(COMPACT) == first
    insert(served.store, [LATE])
    status, body = await served.get(COMPACT)
    assert status == 200 and [body["strings"][i] for i in body["name"]][-1] == "late"
    # Each query is its own answer.
    status, body = await served.get(f"{COMPACT}&levels=model")
    assert [body["strings"][i] for i in body["name"]] == ["predict"]


async def test_max_spans_is_a_413_past_it(served: Served) -> None:
    insert(served.store, KNOWN)
    status, body = await served.get(f"{COMPACT}&max_spans=4")  # 5 spans
    assert status == 413 and "has 5 spans" in body["error"]
    assert (await served.get(f"{COMPACT}&max_spans=5"))[0] == 200
    status, body = await served.get(f"/api/traces/{TRACE}?max_spans=5")
    assert (status, body["error"]) == (400, "max_spans is for format=compact")
    assert (await served.get(f"/api/traces/{'0' * 32}?format=compact&max_spans=5"))[0] == 404


async def test_a_413_for_size_starts_the_first_fill_of_the_windows_the_viewer_reads_next(served: Served, monkeypatch) -> None:
    insert(served.store, KNOWN)
    reader = TraceReader(served.store)
    # Never a trace the settler would not fill, whatever max_spans a client sends.
    assert (await served.get(f"{COMPACT}&max_spans=0"))[0] == 413
    await asyncio.to_thread(pyramids_built)
    assert reader.trace_fills(TRACE) == []
    monkeypatch.setattr(SettlerPolicy, "min_spans", 0)  # KNOWN's 5 spans count as big from here
    assert (await served.get(f"{COMPACT}&max_spans=5"))[0] == 200  # it fits: no fill
    await asyncio.to_thread(pyramids_built)
    assert reader.trace_fills(TRACE) == []
    assert (await served.get(f"{COMPACT}&levels=model&max_spans=4"))[0] == 413  # not the viewer's whole read
    await asyncio.to_thread(pyramids_built)
    assert reader.trace_fills(TRACE) == []
    assert (await served.get(f"{COMPACT}&max_spans=4"))[0] == 413
    await asyncio.to_thread(pyramids_built)
    first = reader.span_depth_fill(TRACE, len(KNOWN))
    assert first is not None and first.pyramid_built  # made, written and its pyramid built, with no window read
    # Grown, it is filled again only as window reads' policy says, however often it is read whole.
    insert(served.store, [LATE])
    for _ in range(3):
        assert (await served.get(f"{COMPACT}&max_spans=4"))[0] == 413
    await asyncio.to_thread(pyramids_built)
    assert [fill.fill for fill in reader.trace_fills(TRACE)] == [first.fill]


async def test_a_span_arriving_as_a_retried_copy_is_merged_away_is_never_hidden(served: Served) -> None:
    """Copies a retry wrote, not merged yet, count as rows: the answer read then is not kept, or
    the merge taking one away and a new span arriving would give its count back over other rows."""
    retried = KNOWN[1]
    insert(served.store, KNOWN)
    insert(served.store, [retried])  # a part of its own: an insert's block is merged as it is written
    assert served.store.execute(f"SELECT count() FROM span_rows WHERE trace_id = '{TRACE}'").rows == [(len(KNOWN) + 1,)]
    status, body = await served.get(COMPACT)
    assert status == 200 and len(body["name"]) == len(KNOWN)
    served.store.execute("OPTIMIZE TABLE span_rows FINAL")  # the merge takes the copy away
    insert(served.store, [LATE])  # and the count is what it was
    assert served.store.execute(f"SELECT count() FROM span_rows WHERE trace_id = '{TRACE}'").rows == [(len(KNOWN) + 1,)]
    status, body = await served.get(COMPACT)
    assert [body["strings"][i] for i in body["name"]][-1] == "late"


@pytest.mark.parametrize("header, accepted", [
    ("gzip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("*", True), ("*;q=0, gzip", True),
    ("gzip;q=0, *", False), ("identity", False), ("", False), ("GZIP", True), ("gzip;Q=0", False), ("gzip;q=x", False),
])
def test_accepts_gzip(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_encoded_cache_drops_the_least_recently_used_past_its_budget() -> None:
    cache = EncodedCache(max_bytes=10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # now the most recently used
    cache.put("c", b"cccc")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"aaaa", None, b"cccc")
    cache.put("big", b"x" * 11)  # more than the whole budget: not kept, nothing dropped for it
    assert (cache.get("big"), cache.get("a")) == (None, b"aaaa")
