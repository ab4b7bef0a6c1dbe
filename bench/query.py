"""Query benchmark: trace reads out of a loaded store, as the API answers them (read, tree,
render, JSON text), without HTTP.

    .venv/bin/python bench/query.py [--total 600000] [--runs 10] [--server | --server-only] [--window-only]

Loads `--total` spans of a realistic shape (bench/query_traces.py): one 100k-span trace, one big
trace of half the total (1M at the full size of 10M) and 1k-span traces for the rest, into the
embedded store in a temporary directory (and a throwaway clickhouse-server with --server). Then
prints p50/p99 for: a 1k-span trace (JSON, compact); the 100k-span trace (JSON, compact,
?levels=application,model, ?max_depth=1) beside the Span-object path (reader.trace_spans +
build_timeline, which exports still use); the first windowed read of the big trace (which
fills span_depths and its pyramid), then windowed reads at 2,000 pixels from the whole run down
to 1/10,000 of it, each with the entries it draws. --window-only skips the 1k and 100k reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ and deploy/ are folders of the repository

from bench.query_traces import trace_columns, trace_id_of  # noqa: E402
from mlscope.store import Store, open_store  # noqa: E402
from mlscope.query.reader import TraceReader  # noqa: E402
from mlscope.query.timeline import (  # noqa: E402
    COMPACT_COLUMNS, TIMELINE_COLUMNS, build_timeline, compact_json, timeline_json, window_json,
)  # noqa: E402
from mlscope.query.traces import TraceQuery, read_trace  # noqa: E402
from mlscope.query.windows import read_window  # noqa: E402

T0 = 1_764_000_000_000_000_000
MID_SPANS = 100_000
SMALL_SPANS = 1_000
PIXELS = 2_000
ZOOMS = (1, 10, 100, 1_000, 10_000)


SMALL_TRACES_PER_INSERT = 100  # as a collector's flush would batch them, not one part per trace


def load(store: Store, total: int, big_spans: int | None = None) -> tuple[str, str, str]:
    """(a 1k-span trace, the 100k-span trace, the big trace of `big_spans`, by default half the
    store) after inserting about `total` spans."""
    big_spans = max(SMALL_SPANS, total // 2 if big_spans is None else big_spans)
    small_count = max(1, (total - big_spans - MID_SPANS) // SMALL_SPANS)
    store.insert("span_rows", trace_columns(1, MID_SPANS, T0))
    store.insert("span_rows", trace_columns(2, big_spans, T0 + 10**9))
    for first in range(0, small_count, SMALL_TRACES_PER_INSERT):
        batch = [trace_columns(10 + number, SMALL_SPANS, T0 + (2 + number) * 10**9)
                 for number in range(first, min(first + SMALL_TRACES_PER_INSERT, small_count))]
        store.insert("span_rows", {name: [value for columns in batch for value in columns[name]] for name in batch[0]})
    return trace_id_of(10), trace_id_of(1), trace_id_of(2)


def timed(action: Callable[[], object], runs: int) -> str:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    p99 = seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))]
    return f"p50 {statistics.median(seconds) * 1e3:8.1f} ms  p99 {p99 * 1e3:8.1f} ms"


def fetch(reader: TraceReader, trace_id: str, query: TraceQuery, compact: bool = False) -> Callable[[], str]:
    def run() -> str:
        read = read_trace(reader, trace_id, query, COMPACT_COLUMNS if compact else TIMELINE_COLUMNS)
        assert read is not None
        if compact:
            return json.dumps(compact_json(trace_id, read.columns, read.tree), ensure_ascii=False)
        return timeline_json(trace_id, read.columns, read.tree)
    return run


def span_objects_path(reader: TraceReader, trace_id: str) -> Callable[[], object]:
    return lambda: build_timeline(trace_id, reader.trace_spans(trace_id))


def window(reader: TraceReader, trace_id: str, zoom: int, drawn: list[int]) -> Callable[[], str]:
    """A read of 1/`zoom` of the trace around its middle at PIXELS pixels; appends the number of
    entries each read drew to `drawn`."""
    start, end = reader.trace_bounds(trace_id)
    width = (end - start) // zoom
    middle = start + (end - start) // 2
    bounds = (middle - width // 2, middle + width // 2)
    resolution = max(1, width // PIXELS)

    def run() -> str:
        read = read_window(reader, trace_id, bounds, resolution)
        assert read is not None
        drawn.append(len(read["span_id"]))
        return json.dumps(window_json(trace_id, bounds, resolution, read))
    return run


def window_rows(reader: TraceReader, trace_id: str, runs: int) -> list[tuple[str, Callable[[], object], int, list[int]]]:
    """The first windowed read of `trace_id` (it trees the trace once and fills span_depths and its
    pyramid; the rest read those), then each zoom: (label, read, runs, entries drawn by each run)."""
    rows: list[tuple[str, Callable[[], object], int, list[int]]] = []
    for zoom in (1, *ZOOMS):
        drawn: list[int] = []
        label = f"big trace, first window (fills span_depths) at {PIXELS} px" if not rows else \
            f"big trace window 1/{zoom} at {PIXELS} px"
        rows.append((label, window(reader, trace_id, zoom, drawn), 1 if not rows else runs, drawn))
    return rows


def bench(store: Store, total: int, runs: int, window_only: bool, big_spans: int | None) -> None:
    started = time.perf_counter()
    small, mid, big = load(store, total, big_spans)
    print(f"{store.url}: {total:,} spans loaded in {time.perf_counter() - started:.1f} s", flush=True)
    reader = TraceReader(store)
    fetches = [] if window_only else [
        ("1k trace, JSON", fetch(reader, small, TraceQuery()), runs),
        ("1k trace, compact", fetch(reader, small, TraceQuery(), compact=True), runs),
        ("100k trace, JSON", fetch(reader, mid, TraceQuery()), max(3, runs // 4)),
        ("100k trace, compact", fetch(reader, mid, TraceQuery(), compact=True), max(3, runs // 4)),
        ("100k trace, ?levels=application,model", fetch(reader, mid, TraceQuery(levels=frozenset({"application", "model"}))), runs),
        ("100k trace, ?max_depth=1", fetch(reader, mid, TraceQuery(max_depth=1)), runs),
        ("100k trace, Span objects (export's path, no JSON)", span_objects_path(reader, mid), max(3, runs // 4)),
    ]
    for label, action, count, drawn in [(*row, []) for row in fetches] + window_rows(reader, big, runs):
        timing = timed(action, count)
        print(f"  {label:<52} {timing}" + (f"  {drawn[-1]:,} entries" if drawn else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=600_000, help="spans loaded (the full run: 10000000)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--server", action="store_true", help="also a throwaway clickhouse-server")
    parser.add_argument("--server-only", action="store_true", help="only the throwaway clickhouse-server")
    parser.add_argument("--window-only", action="store_true", help="only the big trace's windowed reads")
    parser.add_argument("--big-spans", type=int, default=None,
                        help="spans of the big trace (default: half of --total; the full run: 1000000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        if not args.server_only:
            store = open_store(f"embedded://{directory}/store")
            try:
                bench(store, args.total, args.runs, args.window_only, args.big_spans)
            finally:
                store.close()
        if args.server or args.server_only:
            from deploy import clickhouse_local_server

            server = clickhouse_local_server.start(f"{directory}/ch")
            store = open_store(server.url)
            try:
                bench(store, args.total, args.runs, args.window_only, args.big_spans)
            finally:
                store.close()
                server.stop()


if __name__ == "__main__":
    main()
