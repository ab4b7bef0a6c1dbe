"""GET /api/traces/{id}/search over the whole trace (query/search.py): names and layer labels,
case-insensitively, by start; depth and track as the window reads give them; bounded by limit
with the count of all; hostile text matched as text; the read scope under --auth. Both backends."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from mlscope.auth import parse_token_file
from mlscope.query import create_query_app
from mlscope.query.search import MAX_LIMIT, MAX_TEXT_CHARS
from tests.query.query_server import Served, serve
from tests.query.trace_fixtures import insert, row
from tests.test_auth import TOKENS
from tests.ui.deep_trace import DEEP_TRACE, deep_trace_rows, span_id

# 2 model calls (6 layers, 3 ops each) on thread 7 and the worker's call: features.2 is the
# third layer, a ReLU, of each of the three calls.
ROWS = deep_trace_rows(calls=2)
HOSTILE = ["'; DROP TABLE span_rows; --", "100%_\\", "<img src=x onerror=alert(1)>", "nul\x00byte", "naïve ☃"]
ODD = [row(f"00000000000009{index:02x}", span_id(1), name, 990, 991, "application", trace_id=DEEP_TRACE)
       for index, name in enumerate(HOSTILE)]


def search(text: str, extra: str = "") -> str:
    return f"/api/traces/{DEEP_TRACE}/search?q={quote(text, safe='')}{extra}"


@pytest.fixture
async def api(served: Served) -> Served:
    insert(served.store, ROWS + ODD)
    return served


async def test_layer_labels_match_with_their_depth_track_and_times(api: Served) -> None:
    status, body = await api.get(search("features.2"))
    assert status == 200 and (body["q"], body["total"]) == ("features.2", 3)
    layers = [r for r in ROWS if r["attr_values"][:1] == ["features.2"]]
    assert [m["span_id"] for m in body["matches"]] == [r["span_id"] for r in sorted(layers, key=lambda r: r["start_ns"])]
    first = body["matches"][0]
    assert (first["name"], first["level"], first["track"], first["depth"]) == ("2", "layer", "svc", 2)
    assert (first["start_ns"], first["end_ns"]) == (layers[0]["start_ns"], layers[0]["end_ns"])
    # The window read draws the same span at the same depth on the same track.
    status, window = await api.get(f"/api/traces/{DEEP_TRACE}/window?start_ns={first['start_ns']}"
                                   f"&end_ns={first['end_ns']}&resolution_ns=1")
    drawn = next(e for e in window["entries"] if e["span_id"] == first["span_id"])
    assert (drawn["depth"], drawn["track"]) == (first["depth"], first["track"])


async def test_case_insensitive_over_names_and_layer_types_by_start(api: Served) -> None:
    status, body = await api.get(search("RELU"))
    names = {(m["name"], m["level"]) for m in body["matches"]}
    # The ReLU layers (features.2, by their label) and the aten::relu ops.
    assert names == {("2", "layer"), ("aten::relu", "library")}
    assert body["total"] == len(body["matches"]) == sum(
        1 for r in ROWS if "relu" in r["name"].lower() or r["attr_values"][1:2] == ["ReLU"])
    starts = [(m["start_ns"], m["depth"], m["span_id"]) for m in body["matches"]]
    assert starts == sorted(starts)


async def test_limit_bounds_the_list_not_the_count(api: Served) -> None:
    status, body = await api.get(search("aten::", "&limit=5"))
    assert status == 200 and len(body["matches"]) == 5
    assert body["total"] == sum(1 for r in ROWS if r["name"].startswith("aten::"))
    status, nothing = await api.get(search("no span is called this"))
    assert (status, nothing["total"], nothing["matches"]) == (200, 0, [])


@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_text_is_matched_as_text(api: Served, text: str) -> None:
    status, body = await api.get(search(text))
    assert status == 200 and [m["name"] for m in body["matches"]] == [text]
    status, rows = await api.sql("SELECT count() FROM spans")
    assert rows["rows"] == [[len(ROWS + ODD)]]


@pytest.mark.parametrize("query, error", [
    ("", "q (the text to search for) is required"),
    ("?q=", "q (the text to search for) is required"),
    (f"?q={'x' * (MAX_TEXT_CHARS + 1)}", f"q must be at most {MAX_TEXT_CHARS} characters, not {MAX_TEXT_CHARS + 1}"),
    ("?q=a&limit=0", f"limit must be between 1 and {MAX_LIMIT}, not '0'"),
])
async def test_bad_requests(api: Served, query: str, error: str) -> None:
    assert await api.get(f"/api/traces/{DEEP_TRACE}/search{query}") == (400, {"error": error})


async def test_an_unknown_trace_is_404(api: Served) -> None:
    assert (await api.get(f"/api/traces/{'0' * 32}/search?q=a"))[0] == 404


@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)
async def test_search_needs_the_read_scope(store) -> None:  # type: ignore[no-untyped-def]
    insert(store, ROWS)
    runner, base_url = await serve(create_query_app(store, auth=parse_token_file(TOKENS, "tokens.yaml")))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            statuses = []
            for token in (None, "ingest-1", "reader-1"):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.get(search("relu"), headers=headers) as response:
                    statuses.append(response.status)
    finally:
        await runner.cleanup()
    assert statuses == [401, 403, 200]
