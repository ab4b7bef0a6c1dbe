"""The windowed read: span_depths filled once per trace (and again when it grows, the older rows
deleted), the narrow spans merged by the store from the spans or from the pyramid of merged
buckets, one fill read however many processes filled the trace, on both backends."""

from __future__ import annotations

import random
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from mlscope.query.reader import DepthFill, FillRow, TraceReader, copy_rows
from mlscope.query import depths, windows
from mlscope.query.search import search_trace
from mlscope.query.timeline import ATTRIBUTE_COLUMN, VIEWER_ATTRIBUTES, span_tree, window_json
from mlscope.query.depths import bit_lengths, hex_ids, pyramid_widths, tree_spans
from mlscope.query.windows import fill_span_depths, pyramids_built, read_window
from mlscope.store import Store, StoreError, arrow_rows
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, columns_of, row

NO_PYRAMID = DepthFill(fill=1, span_count=0, first_bucket_log2=1, last_bucket_log2=0)
ENTRY_COLUMNS = ("track", "depth", "start_ns", "end_ns", "span_total", "total_ns", "dominant_name", "span_id")


def _store_fill(reader: TraceReader, fill: DepthFill, tracks: list[str], depths: list[int], starts: list[int],
                ends: list[int], names: list[str], levels: list[str] | None = None) -> DepthFill:
    """`fill` of TRACE holding these spans (ids by position), its pyramid built by the store, as
    reads see it (with the duration classes of its spans)."""
    classes = [max(0, end - start).bit_length() for start, end in zip(starts, ends)]
    fill = DepthFill(fill.fill, len(names), fill.first_bucket_log2, fill.last_bucket_log2, tuple(sorted(set(classes))))
    reader.store_span_depths(TRACE, fill, arrow_rows("span_depths", {
        "trace_id": [TRACE] * len(names), "span_count": [len(names)] * len(names), "fill": [fill.fill] * len(names),
        "span_id": [f"{index:016x}" for index in range(len(names))], "parent_span_id": [""] * len(names),
        "attr_keys": [[]] * len(names), "attr_values": [[]] * len(names), "service": tracks, "name": names,
        "level": levels or ["application"] * len(names), "depth": depths, "duration_bits": classes,
        "start_ns": starts, "end_ns": ends}), distinct_rows=len(names))
    reader.store_pyramid(TRACE, fill, distinct_rows=len(names))
    return fill


def _entries(reader: TraceReader, fill: DepthFill, window: tuple[int, int], resolution_ns: int) -> list[tuple]:
    columns = reader.window_entries(TRACE, fill, window, resolution_ns)
    return list(zip(*(columns[name] for name in ENTRY_COLUMNS)))


def test_store_merges_spans_narrower_than_the_resolution(store: Store) -> None:
    # One wide span and, below it, 10 narrow ones: 4 named "a" (1 ns each), 6 "b" (in two pixels).
    starts = [100, 101, 102, 103, 104, 110, 111, 112, 113, 114, 115]
    reader = TraceReader(store)
    fill = _store_fill(reader, NO_PYRAMID, ["svc"] * 11, [0] + [1] * 10, starts, [200] + [s + 1 for s in starts[1:]],
                       ["wide", *"aaaa", *"bbbbbb"])
    assert _entries(reader, fill, (100, 300), 10) == [
        ("svc", 0, 100, 200, 1, 100, "wide", f"{0:016x}"), ("svc", 1, 101, 105, 4, 4, "a", ""),
        ("svc", 1, 110, 116, 6, 6, "b", "")]


def test_store_keeps_tracks_and_depths_apart_and_names_the_dominant(store: Store) -> None:
    # "y" holds 3 ns of p's depth-1 pixel against x's 1; a tie goes to the greatest name; a span
    # starting before the window falls in a pixel of its own (floor, not truncation).
    reader = TraceReader(store)
    fill = _store_fill(reader, NO_PYRAMID, ["p", "p", "q", "p", "q", "q", "p"], [1, 1, 1, 2, 2, 2, 1],
                       [10, 12, 10, 10, 10, 12, 5], [11, 15, 11, 11, 12, 14, 11], ["x", "y", "x", "x", "m", "n", "early"])
    assert [(track, depth, count, name) for track, depth, _, _, count, _, name, _ in _entries(reader, fill, (10, 30), 10)] == [
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


def _pyramid_trace(reader: TraceReader, fill: DepthFill) -> DepthFill:
    """Two tracks of narrow spans of three names and levels under a wide one, at irregular
    starts, with a few spans of a middle width, from 2^20 ns on."""
    base, count = 1 << 20, 600
    starts = [base + index * 3 + (index * 37) % 11 for index in range(count)]
    ends = [start + (40 + index % 20 if index % 50 == 0 else 1 + index % 7) for index, start in enumerate(starts)]
    return _store_fill(reader, fill, ["a" if index % 3 else "b" for index in range(count)],
                       [0] + [1 + index % 2 for index in range(1, count)], starts, [base + 4000] + ends[1:],
                       [("x", "y", "z")[index % 3] for index in range(count)],
                       [("layer", "library", "model", "layer")[index % 4] for index in range(count)])


def test_the_pyramid_merges_as_the_spans_do(store: Store) -> None:
    # The same spans as two fills: read as spans, and through a pyramid of every width from 1 ns.
    reader = TraceReader(store)
    spans = _pyramid_trace(reader, NO_PYRAMID)
    pyramid = _pyramid_trace(reader, DepthFill(fill=2, span_count=0, first_bucket_log2=0, last_bucket_log2=12))
    # No span is instant: width 1 ns is the first to hold buckets.
    for table in ("span_depth_buckets", "span_depth_tiles"):
        assert store.execute(f"SELECT min(bucket_log2), max(bucket_log2), uniqExact(bucket_log2) FROM {table}").rows == \
            [(1, 12, 12)], table
    base = 1 << 20
    # Pixels made of whole buckets (the window's start and the resolution multiples of the width
    # read): the very same entries, names and levels.
    for window, resolution in (((base, base + 4000), 4), ((base + 64, base + 1000), 8), ((base, base + 2047), 32),
                               ((base - 4096, base + 8192), 1024)):
        assert reader.window_entries(TRACE, pyramid, window, resolution) == \
            reader.window_entries(TRACE, spans, window, resolution), (window, resolution)
    # Elsewhere a bucket lands in the pixel of its first start and a pixel of several buckets is
    # named after their dominant names: every span of the window is still counted once, a wide one
    # is still itself, and a track and depth have one entry a pixel.
    for window, resolution in (((base + 3, base + 1203), 5), ((base + 101, base + 1900), 13), ((base + 7, base + 99), 6)):
        by_pyramid, by_spans = (_entries(reader, fill, window, resolution) for fill in (pyramid, spans))
        assert sum(entry[4] for entry in by_pyramid) == sum(entry[4] for entry in by_spans) > 10
        assert sum(entry[5] for entry in by_pyramid) == sum(entry[5] for entry in by_spans)
        assert [entry for entry in by_pyramid if entry[3] - entry[2] >= resolution and entry[4] == 1] == \
            [entry for entry in by_spans if entry[3] - entry[2] >= resolution and entry[4] == 1]
        pixels = [(track, depth, (start - window[0]) // resolution)
                  for track, depth, start, _, _, _, _, span_id in by_pyramid if not span_id]
        assert len(pixels) == len(set(pixels))


def test_pyramid_widths_start_where_buckets_hold_enough_spans() -> None:
    assert pyramid_widths(list(range(64)), 16) == (4, 6)  # 4 buckets of 16, then one of 64
    assert pyramid_widths(list(range(64)), 1) == (0, 6)
    assert pyramid_widths([5] * 40 + [1 << 30], 16) == (0, 31)  # two clumps: two buckets at any width
    assert pyramid_widths([5] * 40 + [1 << 30], 40) == (31, 31)  # one bucket at most
    assert pyramid_widths([7], 16) == (0, 0)


def test_bit_lengths_are_exact_where_floats_round() -> None:
    values = [0, 1, 2, 3, 2**52 - 1, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]
    assert bit_lengths(np.array(values, dtype=np.uint64)).tolist() == [value.bit_length() for value in values]


def _trace_rows(span_ids: list[str], parents: list[str], starts: list[int], ends: list[int]) -> list[tuple]:
    """(span_id, parent, start, end, content_hash) rows: the hash covers the content, as the store's."""
    return [(span_id, parent, start, end, zlib.crc32(f"{parent} {start} {end}".encode()))
            for span_id, parent, start, end in zip(span_ids, parents, starts, ends)]


def _expected_tree(rows: list[tuple]) -> tuple[dict[tuple, int], list[tuple]]:
    """span_tree's depth of each kept row, and the copies (copy_rows), of `rows` in the reader's order."""
    ordered = sorted(rows, key=lambda r: (r[2], r[0], r[3], r[4]))
    tree = span_tree(*([r[column] for r in ordered] for column in range(4)))
    copies = copy_rows([r[0] for r in ordered], [r[4] for r in ordered])
    return ({ordered[row]: depth for row, depth in zip(tree.order, tree.depths)}, sorted(ordered[row] for row in copies))


def _treed(rows: list[tuple]) -> tuple[dict[tuple, int], list[tuple]]:
    treed = tree_spans(pa.table({name: pa.array([r[column] for r in rows], type) for column, (name, type) in enumerate((
        ("span_id", pa.string()), ("parent_span_id", pa.string()), ("start_ns", pa.uint64()), ("end_ns", pa.uint64()),
        ("content_hash", pa.uint64())))}))
    found = list(zip(*(treed.spans[name].to_pylist() for name in ("span_id", "parent_span_id", "start_ns", "end_ns", "content_hash"))))
    return ({found[row]: int(treed.depth[row]) for row in np.flatnonzero(treed.kept)},
            sorted(found[row] for row in treed.copies))


@pytest.mark.parametrize("id_digits", [4, 16], ids=["other ids", "collector's hex ids"])
def test_tree_spans_are_span_trees_of_rows_in_any_order(id_digits: int) -> None:
    generator = random.Random(12)
    for size in (1, 2, 5, 40, 300):
        # Some ids twice (other content), some rows sent twice (copies); the collector's ids are random.
        span_ids = [f"{generator.randrange(size * 2) * 7919 % 2**(4 * id_digits):0{id_digits}x}" for _ in range(size)]
        parents = [generator.choice(["", "f" * id_digits, *span_ids[:row]]) for row in range(size)]  # roots, orphans
        starts = sorted(generator.randrange(1000) for _ in range(size))
        rows = _trace_rows(span_ids, parents, starts, [start + generator.choice((5, 6)) for start in starts])
        rows += generator.sample(rows, size // 4)
        generator.shuffle(rows)
        expected_depths, expected_copies = _expected_tree(rows)
        depths, copies = _treed(rows)
        assert depths == expected_depths and copies == expected_copies, size
    # A span sent again with another parent, that copy first in the rows: its child hangs under the kept one.
    root, span, other_parent, child = (f"{number * 7919:0{id_digits}x}" for number in (1, 2, 3, 4))
    rows = _trace_rows([span, root, other_parent, span, child], [other_parent, "", root, root, span], [5, 0, 2, 1, 6],
                       [9, 20, 8, 9, 7])
    assert _treed(rows) == _expected_tree(rows)
    assert _treed(rows)[0][rows[4]] == 2  # root -> span (its first copy, at 1) -> child


def test_hex_ids_are_the_collectors_ids_as_integers_and_nothing_else() -> None:
    values, present = hex_ids(pa.array(["", "00000000000000ff", "ffffffffffffffff", "8000000000000000"]))
    assert values.tolist() == [0, 255, 2**64 - 1, 2**63] and present.tolist() == [False, True, True, True]
    sliced = hex_ids(pa.array(["not hex", "0000000000000001", ""]).slice(1))
    assert sliced is not None and sliced[0].tolist() == [1, 0] and sliced[1].tolist() == [True, False]
    # Another form anywhere: upper case (its integer would equal a lowercase id's), other lengths, non-hex, nulls.
    for other in (["00000000000000FF"], ["00ff"], ["0000000000000001", "000000000000000g"], ["0000000000000001", None]):
        assert hex_ids(pa.array(other, pa.string())) is None


@pytest.mark.parametrize("id_digits", [1, 16], ids=["other ids", "collector's hex ids"])
def test_tree_spans_leave_loops_to_span_tree(id_digits: int) -> None:
    a, b, c, d = (f"{number:0{id_digits}x}" for number in (10, 11, 12, 13))
    for rows in (_trace_rows([d, b, c, a], [c, c, b, ""], [31, 10, 30, 0], [32, 20, 40, 100]),
                 _trace_rows([a], [a], [0], [10])):
        assert _treed(rows) == _expected_tree(rows)


def test_a_fill_of_a_looping_trace_stores_span_trees_depths(store: Store) -> None:
    looping = [row("00000000000000a1", "", "root", 0, 100), row("00000000000000b2", "00000000000000c3", "b", 10, 20),
               row("00000000000000c3", "00000000000000b2", "c", 30, 40), row("00000000000000d4", "00000000000000c3", "d", 31, 32)]
    store.insert("span_rows", columns_of(looping))
    fill = fill_span_depths(TraceReader(store), TRACE, len(looping))
    assert fill is not None
    stored = dict(store.execute("SELECT span_id, depth FROM span_depths").rows)
    tree = span_tree(*([span[name] for span in looping] for name in ("span_id", "parent_span_id", "start_ns", "end_ns")))
    assert stored == {looping[row]["span_id"]: depth for row, depth in zip(tree.order, tree.depths)}


def _wait_for_deletes(store: Store) -> None:
    """Until the store has applied its pending ALTER ... DELETEs (they run in the background)."""
    deadline = time.monotonic() + 60
    while store.execute("SELECT count() FROM system.mutations WHERE database = currentDatabase() "
                        "AND is_done = 0").rows != [(0,)]:
        assert time.monotonic() < deadline, "mutations still pending after 60 s"
        time.sleep(0.05)


def test_a_trace_is_treed_once_and_again_when_it_grows_keeping_only_its_latest_count(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=0))
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    window = (T0, T0 + 100 * MS)
    first = read_window(reader, TRACE, window, 50 * MS)
    assert first is not None and first == read_window(reader, TRACE, window, 50 * MS)
    assert (first.span_count, first.spans_now) == (5, 5)
    pyramids_built()  # its rows written (after the answer, on the embedded store) and its pyramid built
    assert store.execute("SELECT count(), uniqExact(fill) FROM span_depths").rows == [(5, 1)]  # one fill for both reads
    store.insert("span_rows", columns_of([row("00000000000000e6", "00000000000000d5", "late", 91, 94)]))
    # The grown trace is answered from its earlier fill, as that says, and filled again meanwhile.
    stale = read_window(reader, TRACE, window, 50 * MS)
    assert stale == first and (stale.span_count, stale.spans_now) == (5, 6)
    pyramids_built()
    grown = read_window(reader, TRACE, window, 50 * MS)
    assert grown is not None and ("late", 2) in zip(grown["dominant_name"], grown["depth"])
    assert (grown.span_count, grown.spans_now) == (6, 6)
    _wait_for_deletes(store)
    for table in ("span_depths", "span_depth_buckets", "span_depth_tiles", "span_depth_fills"):
        assert store.execute(f"SELECT DISTINCT span_count FROM {table}").rows == [(6,)], table
    assert store.execute("SELECT count() FROM span_depths").rows == [(6,)]
    assert read_window(reader, "0" * 32, window, 50 * MS) is None


def _grown_known(store: Store) -> TraceReader:
    """KNOWN filled (5 rows), its pyramid built, then grown by one span: 6 rows."""
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    assert windows.depth_fill(reader, TRACE, len(KNOWN), whole=True) is not None
    store.insert("span_rows", columns_of([row("00000000000000e6", "00000000000000d5", "late", 91, 94)]))
    return reader


def test_reads_of_a_growing_trace_wait_for_no_fill_and_start_one_refill(store: Store, monkeypatch) -> None:
    # The process's fill lock is held (a long fill under way) while a window read and a search of
    # the grown trace come: both answer from the earlier fill, and one refill of the trace starts.
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=0))
    refills = []
    refill = windows._refill
    monkeypatch.setattr(windows, "_refill", lambda *args: (refills.append(args[1]), refill(*args)))
    reader = _grown_known(store)
    window = (T0, T0 + 100 * MS)
    with ThreadPoolExecutor(max_workers=1) as reads, windows._DEPTH_FILL:
        stale = reads.submit(read_window, reader, TRACE, window, 1).result(timeout=120)
        found = reads.submit(search_trace, reader, TRACE, "late").result(timeout=120)
    assert stale is not None and (stale.span_count, stale.spans_now) == (5, 6)
    assert "late" not in stale["dominant_name"] and sum(stale["span_total"]) == 5
    assert found is not None and (found["total"], found["span_count"], found["spans_now"]) == (0, 5, 6)
    pyramids_built()
    assert refills == [TRACE]
    fresh = search_trace(reader, TRACE, "late")
    assert fresh is not None and (fresh["total"], fresh["span_count"], fresh["spans_now"]) == (1, 6, 6)


def test_a_grown_trace_is_filled_again_only_as_the_policy_says(store: Store, monkeypatch) -> None:
    refills = []
    monkeypatch.setattr(windows, "_refill", lambda *args: refills.append(args[1]))
    reader = _grown_known(store)
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=3600))
    read = read_window(reader, TRACE, (T0, T0 + 100 * MS), 1)
    assert read is not None and (read.span_count, read.spans_now) == (5, 6)
    windows._REFILLS.submit(lambda: None).result()
    assert refills == []  # its fill is younger than an hour
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=0))
    assert read_window(reader, TRACE, (T0, T0 + 100 * MS), 1) == read
    windows._REFILLS.submit(lambda: None).result()
    assert refills == [TRACE]


def test_the_refill_policy_waits_a_multiple_of_the_latest_fills_work() -> None:
    started = 1_000 * 10**9
    built = FillRow(started | 5, 10, 0, 3, 10, True, filled_ns=started + 2 * 10**9, built_ns=started + 4 * 10**9)
    policy = windows.RefillPolicy(age_over_work=2, min_age_s=1)
    assert not policy.due(built, built.built_ns + 7 * 10**9)
    assert policy.due(built, built.built_ns + 8 * 10**9)
    assert windows.RefillPolicy(age_over_work=0, min_age_s=1).due(built, built.built_ns + 10**9)
    # Its pyramid under way: not before that is built, unless the process building it ended.
    pending = FillRow(started | 5, 10, 0, 3, 10, False, filled_ns=started + 2 * 10**9, built_ns=0)
    assert not policy.due(pending, pending.filled_ns + 60 * 10**9)
    assert policy.due(pending, pending.filled_ns + windows.PYRAMID_WAIT_NS)


def test_a_fill_being_read_is_not_deleted_under_its_reader(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=0))
    reader = _grown_known(store)
    with windows.fill_for_read(reader, TRACE) as read:
        assert read is not None
        held = read.fill
        assert (held.span_count, read.spans_now) == (5, 6)
        pyramids_built()  # the refill made, its pyramid built, what it replaces deleted
        _wait_for_deletes(store)
        assert reader.readable_fill(TRACE, next(f for f in reader.trace_fills(TRACE) if f.fill == held.fill)) == held
        assert sum(reader.window_entries(TRACE, held, (T0, T0 + 100 * MS), 1)["span_total"]) == 5
    pyramids_built()
    _wait_for_deletes(store)
    assert [(f.span_count, f.pyramid_built) for f in reader.trace_fills(TRACE)] == [(6, True)]


def test_two_processes_filling_a_trace_at_once_do_not_double_its_counts(store: Store) -> None:
    # Both fills complete, as when two query processes miss the cache together: reads use one.
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    first, second = (fill_span_depths(reader, TRACE, len(KNOWN), spans_per_bucket=1) for _ in range(2))
    read_fill = reader.span_depth_fill(TRACE, len(KNOWN))
    assert first is not None and second is not None and first.fill != second.fill
    assert read_fill is not None and read_fill.fill == min(first.fill, second.fill)
    for resolution in (1, 10 * MS, 200 * MS):
        read = read_window(reader, TRACE, (T0, T0 + 100 * MS), resolution)
        assert read is not None and sum(read["span_total"]) == len(KNOWN), resolution
    assert store.execute("SELECT count() FROM span_depths").rows == [(2 * len(KNOWN),)]



def _wide_trace(store: Store) -> None:
    root = f"{1:016x}"
    store.insert("span_rows", columns_of([row(root, "", "root", 0, 1000)] + [
        row(f"{index + 2:016x}", root, "xyz"[index % 3], index * 1.5, index * 1.5 + 0.5,
            attributes={"mlscope.layer.path": f"features.{index}", "mlscope.layer.type": "Conv2d"})
        for index in range(600)]))


def test_a_first_read_is_answered_from_the_spans_and_the_pyramid_follows(store: Store) -> None:
    # A fill made for a read is readable before its pyramid: stored at once on a server, and on
    # the embedded store answered from its rows in memory until the pyramid worker writes them.
    _wide_trace(store)
    reader = TraceReader(store)
    span_count = reader.span_row_count(TRACE)
    made = fill_span_depths(reader, TRACE, span_count, spans_per_bucket=1, pyramid_later=True)
    assert made is not None and not made.pyramid_built
    with windows.fill_for_read(reader, TRACE) as read:
        assert read is not None and read.fill.fill == made.fill and not read.fill.pyramid_built
        assert (read.unwritten is not None) == reader.reads_unwritten
        stored = store.execute(f"SELECT count() FROM span_depths WHERE fill = {made.fill}").rows[0][0]
        assert stored == (0 if reader.reads_unwritten else span_count)
        before = read.fill
    assert before.bucket_log2_at(1 << 40) is None  # every window from the spans until then
    pyramids_built()
    after = reader.span_depth_fill(TRACE, span_count)
    assert after is not None and after.fill == made.fill and after.pyramid_built
    assert after.first_bucket_log2 <= after.last_bucket_log2 and after.duration_classes == read.fill.duration_classes
    assert windows.unwritten_rows(TRACE, made) is None
    assert after.bucket_log2_at(1 << 40) == after.last_bucket_log2
    assert store.execute(f"SELECT count() FROM span_depth_tiles WHERE fill = {made.fill}").rows[0][0] > 0
    window = (T0, T0 + 1000 * MS)
    by_pyramid = _entries(reader, after, window, 64 * MS)
    assert sum(entry[4] for entry in by_pyramid) == span_count


def test_reads_of_an_unwritten_fill_answer_as_once_it_is_written(store: Store) -> None:
    # Answers from the fill's rows in memory (the embedded store, before the pyramid worker writes
    # them) are those its stored rows give, search included; the reads meanwhile make no other fill.
    _wide_trace(store)
    reader = TraceReader(store)
    window, narrow = (T0, T0 + 1000 * MS), (T0 + 100 * MS, T0 + 130 * MS)
    worker_free = threading.Event()
    windows._PYRAMIDS.submit(worker_free.wait, 60)  # nothing is written until the reads are answered
    try:
        early = [read_window(reader, TRACE, window, 64 * MS), read_window(reader, TRACE, narrow, MS // 4),
                 search_trace(reader, TRACE, "FEATURES.599")]
        with windows.fill_for_read(reader, TRACE) as read:
            assert read is not None and (read.unwritten is not None) == reader.reads_unwritten
    finally:
        worker_free.set()
    pyramids_built()
    assert store.execute("SELECT count(), uniqExact(fill) FROM span_depths").rows == [(601, 1)]
    written = reader.span_depth_fill(TRACE, 601)
    assert written is not None and written.fill == read.fill.fill and windows.unwritten_rows(TRACE, written) is None
    # The same reads from the stored rows as they stood before the pyramid (every window from the spans).
    stored = windows.FillRead(replace(written, pyramid_built=False), 601, None)
    later = [windows._with_span_details(reader, TRACE, stored, reader.window_entries(TRACE, stored.fill, bounds, resolution))
             for bounds, resolution in ((window, 64 * MS), (narrow, MS // 4))]
    assert [dict(answer) for answer in early[:2]] == later
    assert any(early[1]["span_id"]) and "features.70" in early[1][ATTRIBUTE_COLUMN + "mlscope.layer.path"]
    assert early[2] is not None and early[2]["total"] == 1 and early[2]["matches"][0]["name"] == "z"
    assert early[2] == search_trace(reader, TRACE, "FEATURES.599")


def test_a_fill_that_fails_to_be_written_is_made_again_by_the_next_read(store: Store, monkeypatch, caplog) -> None:
    # The embedded store answers the first read from the fill's rows and writes them after: a
    # failed write is logged and forgotten, and the next read fills the trace again. On a
    # server the rows are written before the answer, so the read itself fails.
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    written = reader.store_span_depths

    def failing_once(*args: object) -> None:
        monkeypatch.setattr(reader, "store_span_depths", written)
        raise StoreError("disk full")

    monkeypatch.setattr(reader, "store_span_depths", failing_once)
    window = (T0, T0 + 100 * MS)
    if not reader.reads_unwritten:
        with pytest.raises(StoreError):
            read_window(reader, TRACE, window, 50 * MS)
    else:
        first = read_window(reader, TRACE, window, 50 * MS)
        assert first is not None and sum(first["span_total"]) == len(KNOWN)
        pyramids_built()
        assert "failed" in caplog.text and windows._fill_of(reader, TRACE, len(KNOWN)) is None
    again = read_window(reader, TRACE, window, 50 * MS)
    assert again is not None and sum(again["span_total"]) == len(KNOWN)
    pyramids_built()
    assert reader.span_depth_fill(TRACE, len(KNOWN)).pyramid_built


def test_a_trace_growing_while_its_first_fill_is_unwritten_is_answered_from_that_fill(store: Store) -> None:
    # Until the pyramid worker writes it, the trace's fill made here is its latest: reads of the
    # grown trace answer from it (as from a stored one) and make no other, nor does start_fill.
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    window = (T0, T0 + 100 * MS)
    worker_free = threading.Event()
    windows._PYRAMIDS.submit(worker_free.wait, 60)
    try:
        assert read_window(reader, TRACE, window, 50 * MS) is not None
        for number, start in enumerate((91, 92, 93)):
            store.insert("span_rows", columns_of([row(f"00000000000000f{number}", "00000000000000d5", "late", start, start + 1)]))
            grown = read_window(reader, TRACE, window, 50 * MS)
            assert grown is not None and (grown.span_count, grown.spans_now) == (5, 6 + number)
            assert windows.start_fill(reader, TRACE, first=True)
            windows._REFILLS.submit(lambda: None).result()
        assert [fill.span_count for fill in windows._unwritten_fills(TRACE)] == [5] * reader.reads_unwritten
    finally:
        worker_free.set()
    pyramids_built()
    assert [fill.span_count for fill in reader.trace_fills(TRACE)] == [5]


def test_an_unwritten_fill_made_over_a_retrys_copies_is_not_read_once_they_are_merged(store: Store) -> None:
    # As for stored fills (schema 013): the copy merged away and a new span make the same row
    # count of other content; the fill made over the copy no longer answers for it.
    store.insert("span_rows", columns_of(KNOWN))
    store.insert("span_rows", columns_of(KNOWN[:1]))  # a client's retry: a copy, not merged yet
    reader = TraceReader(store)
    window = (T0, T0 + 200 * MS)
    worker_free = threading.Event()
    windows._PYRAMIDS.submit(worker_free.wait, 60)
    try:
        first = read_window(reader, TRACE, window, 50 * MS)
        assert first is not None and sum(first["span_total"]) == len(KNOWN)
        store.execute("OPTIMIZE TABLE span_rows FINAL")  # the copy merged away
        store.insert("span_rows", columns_of([row("00000000000000e6", "00000000000000d5", "late", 91, 94)]))
        assert (reader.span_row_count(TRACE), reader.distinct_rows(TRACE)) == (6, 6)
        later = read_window(reader, TRACE, window, 50 * MS)
        assert later is not None and "late" in later["dominant_name"] and sum(later["span_total"]) == 6
        found = search_trace(reader, TRACE, "late")
        assert found is not None and found["total"] == 1
    finally:
        worker_free.set()
    pyramids_built()
    assert windows._unwritten_fills(TRACE) == []


def test_a_fill_left_without_its_pyramid_is_made_again_whole(store: Store, monkeypatch) -> None:
    # The process that wrote a fill's spans ended before its pyramid: the settler's scan lists the
    # trace once PYRAMID_WAIT_NS has passed, and its fill (whole) replaces it with a complete one.
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    fill = DepthFill(windows.new_fill_id(), len(KNOWN), 0, 3, pyramid_built=False)
    reader.store_span_depths(TRACE, fill, depths.span_depth_rows(TRACE, fill, depths.tree_spans(reader.window_spans(TRACE))), len(KNOWN))
    assert reader.unfilled_traces(1, pyramid_wait_ns=3600 * 10**9) == {}
    assert reader.unfilled_traces(1, pyramid_wait_ns=0) == {TRACE: len(KNOWN)}
    waited = windows.depth_fill(reader, TRACE, len(KNOWN), whole=True)
    assert waited is not None and waited.fill == fill.fill  # not missing for long enough to remake
    monkeypatch.setattr(windows, "PYRAMID_WAIT_NS", 0)
    remade = windows.depth_fill(reader, TRACE, len(KNOWN), whole=True)
    assert remade is not None and remade.fill != fill.fill and remade.pyramid_built
    assert reader.unfilled_traces(1, pyramid_wait_ns=0) == {}


def test_a_pyramid_gives_way_to_reads_between_its_statements(store: Store) -> None:
    reader = TraceReader(store)
    fill = _pyramid_trace(reader, NO_PYRAMID)
    built = DepthFill(windows.new_fill_id(), fill.span_count, 1, 4, fill.duration_classes)
    reader.store_span_depths(TRACE, built, arrow_rows("span_depths", {
        **store.execute_columns(f"SELECT * FROM span_depths WHERE fill = {fill.fill}"),
        "fill": [built.fill] * fill.span_count}), distinct_rows=fill.span_count)
    turns: list[int] = []
    reader.store_pyramid(TRACE, built, fill.span_count, give_way=lambda: turns.append(len(turns)))
    assert len(turns) == 2 * 4  # before each width's buckets and tiles
    assert reader.span_depth_fill(TRACE, fill.span_count).pyramid_built


def test_a_pyramid_waits_while_a_read_is_under_way() -> None:
    reads = windows.ReadsUnderWay()
    reads.MAX_WAIT_S = 60.0  # longer than the test: only the read's end lets the pyramid on
    in_read, end_read = threading.Event(), threading.Event()

    def read() -> None:
        with reads.reading():
            in_read.set()
            end_read.wait(60)

    reader_thread = threading.Thread(target=read)
    reader_thread.start()
    assert in_read.wait(10)
    pyramid = threading.Thread(target=reads.give_way)
    pyramid.start()
    pyramid.join(0.5)
    assert pyramid.is_alive()  # waiting for the read
    end_read.set()
    pyramid.join(10)
    reader_thread.join(10)
    assert not pyramid.is_alive()
    reads.give_way()  # no read: returns at once


def test_a_fill_deleted_while_its_pyramid_is_built_stays_deleted(store: Store, monkeypatch) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    monkeypatch.setattr(TraceReader, "reads_unwritten", False)  # its rows written first, then deleted
    made = fill_span_depths(reader, TRACE, len(KNOWN), spans_per_bucket=1, pyramid_later=True)
    assert made is not None and made.first_bucket_log2 <= made.last_bucket_log2
    for table in ("span_depth_fills", "span_depths"):  # as retire_fills or an emptied cache leaves them
        store.execute(f"TRUNCATE TABLE {table}")
    pyramids_built()
    assert store.execute("SELECT count() FROM span_depth_fills").rows == [(0,)]
    assert reader.span_depth_fill(TRACE, len(KNOWN)) is None
