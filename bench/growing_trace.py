"""Reads of a growing trace: the viewer watching a live run, whose trace gains spans while its
windows and searches are read.

    .venv/bin/python bench/growing_trace.py [--spans 1000000] [--seconds 40] [--mode stale|refill]

Loads a trace of `--spans` spans (bench/query_traces.py's shape) into the embedded store in a
temporary directory and fills its window cache (as its first read, then its pyramid). Then, for
`--seconds`, a writer appends `--batch` spans every `--every` seconds (model calls after the
last, under the root, as an exporter's flushes would) while one reader alternates a window read
of the whole trace at 2,000 pixels and a search, one after the other, as a page does. Prints
each kind's latency (p50, p90, max), how many answers were made from a fill older than the
trace (span_count < spans_now) and by how many rows at most, and the fills made.

`--mode stale` is the read as it is (query/windows.py read_fill: a grown trace is answered from
its latest fill and filled again in the background); `--mode refill` reads as before that: every
read of a grown trace fills it first (windows.depth_fill).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ is a folder of the repository

from bench.query_traces import CALL_NS, trace_columns, trace_id_of  # noqa: E402
from mlscope.query import windows  # noqa: E402
from mlscope.query.reader import TraceReader  # noqa: E402
from mlscope.query.search import search_trace  # noqa: E402
from mlscope.query.timeline import window_json  # noqa: E402
from mlscope.store import Columns, Store, open_store  # noqa: E402

T0 = 1_764_000_000_000_000_000
TRACE_NUMBER = 2
PIXELS = 2_000


def grown_batch(batch: int, spans: int, start_ns: int) -> Columns:
    """About `spans` spans of model calls from `start_ns`, under the trace's root, with ids of batch `batch`."""
    columns = trace_columns(TRACE_NUMBER, spans + 1, start_ns)
    root = columns["span_id"][0]
    prefix, own = f"{TRACE_NUMBER:08x}", f"{0x10000 + batch:08x}"
    keep = range(1, len(columns["span_id"]))
    out = {name: [values[row] for row in keep] for name, values in columns.items()}
    out["span_id"] = [own + span_id[8:] for span_id in out["span_id"]]
    out["parent_span_id"] = [parent if parent == root else own + parent[8:] for parent in out["parent_span_id"]]
    assert all(span_id.startswith(own) for span_id in out["span_id"]) and prefix != own
    return out


def stats(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (f"{len(ordered):4d} reads  p50 {statistics.median(ordered) * 1e3:8.1f} ms  p90 {p90 * 1e3:8.1f} ms  "
            f"max {ordered[-1] * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--batch", type=int, default=2_000, help="spans the writer appends each time")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between the writer's appends")
    parser.add_argument("--mode", choices=("stale", "refill"), default="stale")
    args = parser.parse_args()
    if args.mode == "refill":
        windows.read_fill = windows.depth_fill  # every read of a grown trace fills it first
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(f"embedded://{directory}/store")
        try:
            run(store, args)
        finally:
            windows.pyramids_built()
            store.close()


def run(store: Store, args: argparse.Namespace) -> None:
    trace_id = trace_id_of(TRACE_NUMBER)
    started = time.perf_counter()
    first = trace_columns(TRACE_NUMBER, args.spans, T0)
    store.insert("span_rows", first)
    end_ns = max(first["end_ns"])
    del first
    reader = TraceReader(store)
    loaded_s = time.perf_counter() - started
    started = time.perf_counter()
    bounds = reader.trace_bounds(trace_id)
    assert bounds is not None and windows.read_window(reader, trace_id, bounds, max(1, (bounds[1] - bounds[0]) // PIXELS))
    first_read_s = time.perf_counter() - started
    windows.pyramids_built()
    print(f"mode {args.mode}: {reader.span_row_count(trace_id):,} spans loaded in {loaded_s:.1f} s, first window "
          f"{first_read_s:.2f} s, its pyramid {time.perf_counter() - started - first_read_s:.2f} s", flush=True)

    stop = threading.Event()
    appended = [0]

    def write() -> None:
        batch, next_ns = 0, end_ns + CALL_NS
        while not stop.wait(args.every):
            columns = grown_batch(batch, args.batch, next_ns)
            store.insert("span_rows", columns)
            appended[0] += len(columns["span_id"])
            next_ns = max(columns["end_ns"]) + CALL_NS
            batch += 1

    writer = threading.Thread(target=write, name="writer")
    writer.start()
    fills_before = {row.fill for row in reader.trace_fills(trace_id)}
    made: set[int] = set()
    window_reads: list[float] = []
    searches: list[float] = []
    stale_answers, behind_most, answers = 0, 0, 0
    until = time.monotonic() + args.seconds
    try:
        while time.monotonic() < until:
            bounds = reader.trace_bounds(trace_id)
            assert bounds is not None
            resolution = max(1, (bounds[1] - bounds[0]) // PIXELS)
            began = time.perf_counter()
            read = windows.read_window(reader, trace_id, bounds, resolution)
            assert read is not None
            answer = window_json(trace_id, bounds, resolution, read)
            window_reads.append(time.perf_counter() - began)
            began = time.perf_counter()
            found = search_trace(reader, trace_id, "layer1.2")
            assert found is not None
            searches.append(time.perf_counter() - began)
            for covered, now in ((answer.get("span_count"), answer.get("spans_now")), (found.get("span_count"), found.get("spans_now"))):
                answers += 1
                if covered is not None and covered < now:
                    stale_answers += 1
                    behind_most = max(behind_most, now - covered)
            made |= {row.fill for row in reader.trace_fills(trace_id)} - fills_before
    finally:
        stop.set()
        writer.join()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"  {args.seconds:.0f} s, {appended[0]:,} spans appended ({args.batch:,} every {args.every:g} s); uptime: {uptime}")
    print(f"  window, whole trace at {PIXELS} px: {stats(window_reads)}")
    print(f"  search 'layer1.2':                {stats(searches)}")
    print(f"  answers from an earlier fill: {stale_answers} of {answers} (at most {behind_most:,} rows behind); "
          f"fills made: {len(made)}", flush=True)


if __name__ == "__main__":
    main()
