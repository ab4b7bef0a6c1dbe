"""One trace read out of span_rows (query/traces.py read_trace, reader.trace_columns), on both
backends: the copies a retry wrote, not merged yet by the store, come out once; a span re-sent
with other content is kept beside the first and warned about; the span cap holds on distinct
spans whatever the copies, before the spans are read."""

from __future__ import annotations

import pytest

from mlscope.query.errors import TooLarge
from mlscope.query.reader import RowsOverLimit, TraceReader
from mlscope.query.timeline import COMPACT_COLUMNS, TIMELINE_COLUMNS
from mlscope.query.traces import SpanCap, TraceQuery, check_span_cap, read_trace
from mlscope.store import Store
from tests.query.trace_fixtures import KNOWN, TRACE, columns_of

QUERIES = (TraceQuery(), TraceQuery(levels=frozenset({"application", "layer"})), TraceQuery(max_depth=1),
           TraceQuery(raw=True))


def _unmerged_rows(store: Store) -> int:
    return store.execute(f"SELECT count() FROM span_rows WHERE trace_id = '{TRACE}'").rows[0][0]


def _reads(reader: TraceReader) -> list[tuple]:
    """Every read form of TRACE: the span ids in order, depths, self times and warnings."""
    found = []
    for query in QUERIES:
        for names in (TIMELINE_COLUMNS, COMPACT_COLUMNS):
            read = read_trace(reader, TRACE, query, names)
            assert read is not None
            ids = read.columns["span_id"]
            found.append(([ids[row] for row in read.tree.order], read.tree.depths,
                          [read.tree.self_ns[row] for row in read.tree.order], read.tree.warnings))
    found.append(reader.trace_spans(TRACE))  # the Span objects of exports, analyses and diffs
    return found


def test_a_retry_not_merged_yet_reads_as_one_copy(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    once = _reads(reader)
    assert len(once[-1]) == len(KNOWN) and not any(warnings for *_, warnings in once[:-1])
    store.insert("span_rows", columns_of(KNOWN[::-1]))  # the client's retry, in another order
    assert _unmerged_rows(store) == 2 * len(KNOWN)  # two parts: the store has not merged them
    assert _reads(reader) == once


def test_a_span_re_sent_with_other_content_is_kept_and_warned_about(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    forged = {**KNOWN[2], "name": "relu-forged"}
    store.insert("span_rows", columns_of([forged, KNOWN[2]]))  # one retry, one copy of other content
    reader = TraceReader(store)
    read = read_trace(reader, TRACE, TraceQuery(), TIMELINE_COLUMNS)
    assert read is not None and len(read.tree.order) == len(KNOWN)
    assert read.tree.warnings == (f"span {KNOWN[2]['span_id']}: sent 2 times with different content; kept the earliest",)
    raw = read_trace(reader, TRACE, TraceQuery(raw=True), ("span_id", "name", "duration_ns"))
    assert raw is not None and sorted(name for name in raw.columns["name"] if "relu" in name) == ["relu", "relu-forged"]


def test_the_cap_counts_spans_not_copies_and_holds_before_a_read(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    store.insert("span_rows", columns_of(KNOWN))  # twice the rows, the same spans
    reader = TraceReader(store)
    exact = SpanCap(full=len(KNOWN), compact=len(KNOWN))
    for compact, names in ((False, TIMELINE_COLUMNS), (True, COMPACT_COLUMNS)):
        read = read_trace(reader, TRACE, TraceQuery(), names, exact, compact)
        assert read is not None and len(read.tree.order) == len(KNOWN)
        read = read_trace(reader, TRACE, TraceQuery(), names, exact, compact, row_count=2 * len(KNOWN))
        assert read is not None and len(read.tree.order) == len(KNOWN)
        with pytest.raises(TooLarge):
            read_trace(reader, TRACE, TraceQuery(), names, SpanCap(full=len(KNOWN) - 1, compact=len(KNOWN) - 1), compact)
    with pytest.raises(RowsOverLimit):
        reader.trace_columns(TRACE, ("span_id",), max_rows=len(KNOWN))


def test_the_cap_check_counts_rows_first_and_distinct_spans_only_past_the_cap(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    store.insert("span_rows", columns_of(KNOWN))  # twice the rows, the same spans
    reader = TraceReader(store)
    rows, spans = 2 * len(KNOWN), len(KNOWN)
    # Counted over the trace's rows, or by the trace index (a row count past the threshold): alike.
    assert reader.span_count(TRACE) == reader.span_count(TRACE, row_count=10**9) == spans
    assert reader.span_count("0" * 32) == 0
    for compact in (False, True):
        assert check_span_cap(reader, TRACE, SpanCap(full=rows, compact=rows), compact) == rows
        assert check_span_cap(reader, TRACE, SpanCap(full=spans, compact=spans), compact) == rows  # copies are not spans
        with pytest.raises(TooLarge):
            check_span_cap(reader, TRACE, SpanCap(full=spans - 1, compact=spans - 1), compact)
    # A row count the caller has is used as given: at or under the cap, no spans are counted.
    assert check_span_cap(reader, TRACE, SpanCap(full=spans - 1), row_count=spans - 1) == spans - 1
    assert check_span_cap(reader, "0" * 32, SpanCap(full=0, compact=0)) == 0


def test_an_unknown_trace_is_none_and_a_raw_read_keeping_nothing_is_empty(store: Store) -> None:
    store.insert("span_rows", columns_of(KNOWN))
    reader = TraceReader(store)
    for query in QUERIES:
        assert read_trace(reader, "0" * 32, query, TIMELINE_COLUMNS) is None
    assert read_trace(reader, "0" * 32, TraceQuery(), COMPACT_COLUMNS, row_count=0) is None
    nothing = read_trace(reader, TRACE, TraceQuery(raw=True, levels=frozenset({"hardware"})), TIMELINE_COLUMNS)
    assert nothing is not None and nothing.columns["span_id"] == []
