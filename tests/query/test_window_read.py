"""The windowed read: span_depths filled once per trace (and again when it grows), the narrow
spans merged by the store, on both backends."""

from __future__ import annotations

from mlscope.query.reader import TraceReader
from mlscope.query.timeline import VIEWER_ATTRIBUTES, window_json
from mlscope.query.traces import read_window
from mlscope.store import Store
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, columns_of, row


def _depth_rows(tracks: list[str], depths: list[int], starts: list[int], ends: list[int], names: list[str]) -> dict:
    return {"trace_id": [TRACE] * len(names), "span_count": [len(names)] * len(names),
            "span_id": [f"{index:016x}" for index in range(len(names))], "service": tracks, "name": names,
            "depth": depths, "start_ns": starts, "end_ns": ends}


def _entries(reader: TraceReader, count: int, window: tuple[int, int], resolution_ns: int) -> list[tuple]:
    columns = reader.window_entries(TRACE, count, window, resolution_ns)
    return list(zip(*(columns[name] for name in ("track", "depth", "start_ns", "end_ns", "span_total", "total_ns",
                                                 "dominant_name", "span_id"))))


def test_store_merges_spans_narrower_than_the_resolution(store: Store) -> None:
    # One wide span and, below it, 10 narrow ones: 4 named "a" (1 ns each), 6 "b" (in two pixels).
    starts = [100, 101, 102, 103, 104, 110, 111, 112, 113, 114, 115]
    reader = TraceReader(store)
    reader.store_span_depths(_depth_rows(["svc"] * 11, [0] + [1] * 10, starts, [200] + [s + 1 for s in starts[1:]],
                                         ["wide", *"aaaa", *"bbbbbb"]))
    assert _entries(reader, 11, (100, 300), 10) == [
        ("svc", 0, 100, 200, 1, 100, "wide", f"{0:016x}"), ("svc", 1, 101, 105, 4, 4, "a", ""),
        ("svc", 1, 110, 116, 6, 6, "b", "")]


def test_store_keeps_tracks_and_depths_apart_and_names_the_dominant(store: Store) -> None:
    # "y" holds 3 ns of p's depth-1 pixel against x's 1; a tie goes to the greatest name; a span
    # starting before the window falls in a pixel of its own (floor, not truncation).
    reader = TraceReader(store)
    reader.store_span_depths(_depth_rows(["p", "p", "q", "p", "q", "q", "p"], [1, 1, 1, 2, 2, 2, 1],
                                         [10, 12, 10, 10, 10, 12, 5], [11, 15, 11, 11, 12, 14, 11],
                                         ["x", "y", "x", "x", "m", "n", "early"]))
    assert [(track, depth, count, name) for track, depth, _, _, count, _, name, _ in _entries(reader, 7, (10, 30), 10)] == [
        ("p", 1, 1, "early"), ("p", 1, 2, "y"), ("p", 2, 1, "x"), ("q", 1, 1, "x"), ("q", 2, 2, "n")]


def test_entries_carry_levels_and_single_spans_their_parent_and_attributes(store: Store) -> None:
    # At 10 ms a pixel: under a wide layer span, three narrow spans share a pixel, where "c" holds
    # the most time of any name (1.5 ms) but layer the most of any level (2 ms); a lone narrow
    # span is an entry of its own, its unknown level counted as the default one.
    layer = {VIEWER_ATTRIBUTES["layer_path"]: "features.3", VIEWER_ATTRIBUTES["layer_type"]: "Conv2d"}
    store.insert("span_rows", columns_of([
        row("00000000000000a1", "", "run", 0, 100, attributes={VIEWER_ATTRIBUTES["thread_name"]: "main"}),
        row("00000000000000b2", "00000000000000a1", "conv", 0, 60, "layer", attributes=layer),
        row("00000000000000c1", "00000000000000b2", "a", 20, 21, "layer"),
        row("00000000000000c2", "00000000000000b2", "b", 21, 22, "layer"),
        row("00000000000000c3", "00000000000000b2", "c", 22, 23.5, "library"),
        row("00000000000000c4", "00000000000000b2", "odd", 40, 41, "bogus")]))
    window = (T0, T0 + 100 * MS)
    read = read_window(TraceReader(store), TRACE, window, 10 * MS)
    assert read is not None
    assert [(read["dominant_name"][i], read["span_total"][i], read["dominant_level"][i], read["parent_span_id"][i])
            for i in range(len(read["span_id"]))] == [
        ("run", 1, "application", ""), ("conv", 1, "layer", "00000000000000a1"), ("c", 3, "layer", ""),
        ("odd", 1, "application", "00000000000000b2")]
    entries = window_json(TRACE, window, 10 * MS, read)["entries"]
    assert [entry.get("attributes") for entry in entries] == [
        {VIEWER_ATTRIBUTES["thread_name"]: "main"}, layer, None, {}]
    assert "parent_span_id" not in entries[2] and entries[2]["level"] == "layer"


def test_a_trace_is_treed_once_and_again_when_it_grows(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    window = (T0, T0 + 100 * MS)
    first = read_window(reader, TRACE, window, 50 * MS)
    assert first is not None and first == read_window(reader, TRACE, window, 50 * MS)
    assert store.execute("SELECT count() FROM span_depths").rows == [(5,)]
    store.insert("span_rows", columns_of([row("00000000000000e6", "00000000000000d5", "late", 91, 94)]))
    grown = read_window(reader, TRACE, window, 50 * MS)
    assert grown is not None and ("late", 2) in zip(grown["dominant_name"], grown["depth"])
    assert store.execute("SELECT count(), max(span_count) FROM span_depths").rows == [(11, 6)]
    assert read_window(reader, "0" * 32, window, 50 * MS) is None
