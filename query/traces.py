"""One trace read for the API: what to read from the store for a request, then the tree.

Blocking (the reader is); the HTTP layer runs these in worker threads. The filters go to the
store: with none, one read of every column; with levels, a depth limit or a time window, a read
of the columns the tree needs (ids, parents, times) for the whole trace (self times and nearest
kept ancestors need every span), then every column of the kept spans only.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscope.conventions import PROCESS_ORPHANED, stored_level
from mlscope.store import SPAN_ROWS, Columns

from .errors import TooLarge
from .reader import TRACE_ORDER_COLUMNS, WINDOW_ATTRIBUTES, DepthFill, FillRow, RowsOverLimit, TraceReader, copy_rows
from .timeline import ATTRIBUTE_COLUMN, SpanTree, WindowColumns, span_tree

TREE_COLUMNS = ("span_id", "parent_span_id", "start_ns", "end_ns", "level")
ORPHANED_COLUMN = ATTRIBUTE_COLUMN + PROCESS_ORPHANED
# Up to this many kept spans are named to the store by id; more are read by level and window
# and picked here (a longer IN list costs the store more than the rows it saves).
MAX_IDS_IN_QUERY = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpanCap:
    """The most spans one response holds: a whole trace is built in memory before it is sent
    (a 300k-span trace took 1.5 GB), so past the cap the answer is 413 with the ways to read less."""

    full: int = 200_000  # every column of each span: ?format=json, export, analysis, diff
    compact: int = 1_000_000  # ?format=compact: a few numbers per span, names in a string table

    def check(self, trace_id: str, span_count: int, compact: bool = False) -> None:
        """Raises TooLarge when `span_count` spans are more than a response of this kind holds."""
        limit = self.compact if compact else self.full
        if span_count <= limit:
            return
        compact_hint = "" if compact else f", ?format=compact (up to {self.compact:,} spans)"
        raise TooLarge(
            f"trace {trace_id} has {span_count:,} spans, more than one response holds ({limit:,}): read part "
            f"of it with GET /api/traces/{trace_id}?levels=application,model, ?max_depth=N or "
            f"?start_ns=&end_ns={compact_hint}, or draw it with /api/traces/{trace_id}/window")


def check_span_cap(reader: TraceReader, trace_id: str, cap: SpanCap, compact: bool = False,
                   row_count: int | None = None) -> int:
    """TooLarge when `trace_id` has more spans than `cap` lets a response of its kind hold; else
    its rows in span_rows (`row_count`, when the caller has just counted them), 0 for an unknown
    trace. The rows are counted first, cheaply: there are never fewer rows than spans (copies a
    retry wrote count until the store merges them), so only a trace of more rows than the cap
    has its distinct spans counted."""
    row_count = reader.span_row_count(trace_id) if row_count is None else row_count
    if row_count > (cap.compact if compact else cap.full):
        cap.check(trace_id, reader.span_count(trace_id, row_count), compact)
    return row_count


@dataclass(frozen=True)
class TraceQuery:
    levels: frozenset[str] | None = None
    max_depth: int | None = None
    window: tuple[int, int] | None = None  # spans overlapping [start_ns, end_ns]
    raw: bool = False


@dataclass(frozen=True)
class TraceRead:
    columns: Columns  # every column of the spans read
    tree: SpanTree  # rows of `columns`


def _rows_of_kept(columns: Columns, tree: SpanTree, read: Columns) -> SpanTree:
    """`tree` (over `columns`) re-indexed to the rows of `read`, which holds its kept spans."""
    row_of: dict[str, int] = {}
    for row, span_id in enumerate(read["span_id"]):
        row_of.setdefault(span_id, row)
    self_ns = [0] * len(read["span_id"])
    order, depths = [], []
    for row, depth in zip(tree.order, tree.depths):
        found = row_of.get(columns["span_id"][row])
        if found is not None:
            order.append(found)
            depths.append(depth)
            self_ns[found] = tree.self_ns[row]
    return SpanTree(order, depths, self_ns, tree.warnings)


def read_trace(reader: TraceReader, trace_id: str, query: TraceQuery,
               names: Sequence[str] = SPAN_ROWS.column_names, cap: SpanCap = SpanCap(),
               compact: bool = False, row_count: int | None = None) -> TraceRead | None:
    """The `names` columns of the spans of `trace_id` the query keeps, in tree order; None for
    an unknown trace. TooLarge past `cap` (the `compact` one for ?format=compact), checked
    before the spans are read: with filters, on the spans kept; else on the trace's distinct
    spans, counted only when its rows in span_rows may be more than the cap (`row_count`, when
    the caller has just counted them; else the store's estimate as it starts the read)."""
    if query.raw or (query.levels is None and query.max_depth is None and query.window is None):
        columns = _read_whole(reader, trace_id, query, names, cap, compact, row_count)
        if columns is None:
            return None
        if query.raw:
            rows = list(range(len(columns["span_id"])))
            return TraceRead(columns, SpanTree(rows, [0] * len(rows), list(columns["duration_ns"]), ()))
        tree = span_tree(columns["span_id"], columns["parent_span_id"], columns["start_ns"], columns["end_ns"])
        return TraceRead(columns, _excusing_helpers(reader, trace_id, tree))
    skeleton = reader.trace_columns(trace_id, TREE_COLUMNS)
    if not skeleton["span_id"]:
        return None
    starts, ends = skeleton["start_ns"], skeleton["end_ns"]
    keep = [
        (query.levels is None or stored_level(level) in query.levels)
        and (query.window is None or (start <= query.window[1] and end >= query.window[0]))
        for level, start, end in zip(skeleton["level"], starts, ends)
    ]
    tree = _excusing_helpers(reader, trace_id, span_tree(
        skeleton["span_id"], skeleton["parent_span_id"], starts, ends, keep=keep, max_depth=query.max_depth))
    cap.check(trace_id, len(tree.order), compact)
    kept_ids = [skeleton["span_id"][row] for row in tree.order]
    named = kept_ids if query.max_depth is not None and len(kept_ids) <= MAX_IDS_IN_QUERY else None
    read = reader.trace_columns(trace_id, names, levels=query.levels, window=query.window, span_ids=named)
    return TraceRead(read, _rows_of_kept(skeleton, tree, read))


def _read_whole(reader: TraceReader, trace_id: str, query: TraceQuery, names: Sequence[str], cap: SpanCap,
                compact: bool, row_count: int | None) -> Columns | None:
    """Every span of the trace (raw: those of the query's levels and window), None for an unknown
    trace. One statement when the trace is small: the read itself refuses to start on more rows
    than the cap (as the store estimates them from the granules it would read: a little more
    than the rows), and only then are the trace's distinct spans counted."""
    limit = cap.compact if compact else cap.full
    if row_count is not None and not row_count:
        return None
    columns = None
    if row_count is None or row_count <= limit:
        try:
            columns = reader.trace_columns(trace_id, names, levels=query.levels, window=query.window,
                                           max_rows=None if row_count is not None else limit)
        except RowsOverLimit:
            pass
    if columns is None:  # more rows than the cap: copies not merged yet count as rows, spans may not be more
        cap.check(trace_id, reader.span_count(trace_id, row_count), compact)
        columns = reader.trace_columns(trace_id, names, levels=query.levels, window=query.window)
    if columns["span_id"]:
        return columns
    # None read: an unknown trace, or raw filters that keep no span of it.
    return columns if reader.span_row_count(trace_id) else None


def _excusing_helpers(reader: TraceReader, trace_id: str, tree: SpanTree) -> SpanTree:
    """`tree` without the outside-its-parent warnings of process spans marked as outliving their
    parent (a helper process, by design): the mark is read for the warned spans only."""
    if not tree.outside_parent:
        return tree
    warned = [span_id for span_id, _ in tree.outside_parent]
    marks = reader.trace_columns(trace_id, ("span_id", ORPHANED_COLUMN),
                                 span_ids=warned if len(warned) <= MAX_IDS_IN_QUERY else None)
    return tree.excusing({span_id for span_id, mark in zip(marks["span_id"], marks[ORPHANED_COLUMN]) if mark == "true"})


# One fill of span_depths at a time in this process; fills by other processes at once are
# told apart by their fill ids (reader.span_depth_fill reads one).
_DEPTH_FILL = threading.Lock()
# The pyramid's finest buckets: those in which a trace's spans start in at most 1/16 as many
# buckets as it has spans. Finer ones would merge too little to read faster than the spans.
PYRAMID_SPANS_PER_BUCKET = 16


def pyramid_widths(starts: Sequence[int] | np.ndarray, spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET) -> tuple[int, int]:
    """(first, last) bucket width, as log2 ns, of the pyramid of a trace whose spans start at
    `starts` (ascending): from the finest width at which the starts fall in at most
    len(starts) / spans_per_bucket buckets (at least one), to the width at which they share one."""
    # Sorted starts fall in 1 + (the neighbours whose highest differing bit is at or above k)
    # buckets of width 2^k: one pass gives the count at every width.
    starts = np.asarray(starts, dtype=np.uint64)
    highest_bits = np.bincount(bit_lengths(starts[1:] ^ starts[:-1]).astype(np.int64), minlength=66)
    last = int(np.flatnonzero(highest_bits)[-1]) if highest_bits.any() else 0
    most_buckets = max(1, len(starts) // max(1, spans_per_bucket))
    buckets = 1
    for width in range(last, -1, -1):
        buckets += int(highest_bits[width + 1])
        if buckets > most_buckets:
            return width + 1, last
    return 0, last


def bit_lengths(values: np.ndarray) -> np.ndarray:
    """int.bit_length of each uint64 (exact: a float's exponent, less one where the conversion
    rounded up to the next power of two)."""
    values = np.asarray(values, dtype=np.uint64)
    exponents = np.minimum(np.frexp(values.astype(np.float64))[1], 64).astype(np.int64)  # 2**64 - 1 rounds to 2**64
    below = np.left_shift(np.uint64(1), np.maximum(exponents - 1, 0).astype(np.uint64)) > values
    return (exponents - ((exponents > 0) & below)).astype(np.uint64)


# The value of each byte of a lowercase hex digit; HEX_INVALID for every other byte.
HEX_INVALID = 255
_HEX_DIGITS = np.full(256, HEX_INVALID, np.uint8)
_HEX_DIGITS[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def hex_ids(ids: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(value, present) of string ids that are each '' or 16 lowercase hex digits, as the
    collector writes the 8 bytes of OTLP span ids: the id as an integer (0 for '') and whether
    it is there. Two ids are equal exactly when their integers are (and both are there), and
    order alike. None when any id has another form (the store may hold others): whole-buffer
    work, no Python object per id."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if ids.type != pa.string():
        return None
    # A string array's buffers: validity, int32 offsets, bytes.
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + len(ids) + 1]
    lengths = np.diff(offsets)
    present = lengths != 0
    if ids.null_count or not np.all(lengths[present] == 16):
        return None
    data = ids.buffers()[2]  # None when every id is ''
    digits = _HEX_DIGITS[np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)]
    if np.any(digits == HEX_INVALID):
        return None
    digits = digits.reshape(-1, 16)
    big_endian = np.ascontiguousarray(digits[:, 0::2] << 4 | digits[:, 1::2]).view(">u8").ravel()
    values = np.zeros(len(ids), np.uint64)
    values[present] = big_endian
    return values, present


@dataclass(frozen=True)
class TreedSpans:
    """A trace's rows (the reader's window_spans) with what span_tree makes of them."""

    spans: pa.Table  # the rows, in the order of the arrays below
    kept: np.ndarray  # bool by row: the copy of its span id span_tree keeps (the first in _READER_ORDER)
    depth: np.ndarray  # uint64 by row: its depth in span_tree's tree
    copies: np.ndarray  # the rows repeating another's span id and content (copy_rows: FINAL would merge them)


# The order in which span_tree is given a trace's rows (as the reader's reads have them): it keeps
# the first copy of a span id and breaks a loop of parents at the first span it meets of it.
_READER_ORDER = [(name, "ascending") for name in TRACE_ORDER_COLUMNS]


def tree_spans(spans: pa.Table) -> TreedSpans:
    """The depths of a trace's rows (span_id, parent_span_id, start_ns, end_ns, content_hash, in
    any order) as span_tree makes them of the rows in _READER_ORDER: each span id's kept row is
    its first there, a row's parent the kept row of its parent id (none when that is '' or not in
    the trace). Whole-column work: the ids matched (as integers by a sort when they are the
    collector's hex ids, hex_ids, else by Arrow's hash of the strings of the rows in order), then
    the parents followed by doubling, log2(depth) steps. Parents that loop are left to span_tree
    itself (it breaks a loop at a chosen span), one Python step per span."""
    matched = _matched_hex_ids(spans)
    if matched is None:
        spans = spans.sort_by(_READER_ORDER)
        matched = _matched_in_order(spans)
    kept, up, copies = matched
    depth = _depths(up)
    if depth is None:
        spans = spans.sort_by(_READER_ORDER)
        _, _, copies = _matched_in_order(spans)
        kept = np.zeros(spans.num_rows, dtype=bool)
        depth = np.zeros(spans.num_rows, dtype=np.uint64)
        tree = span_tree(*(spans[name].to_pylist() for name in ("span_id", "parent_span_id", "start_ns", "end_ns")))
        kept[tree.order] = True
        depth[tree.order] = tree.depths
    return TreedSpans(spans, kept, depth, copies)


def _matched_in_order(spans: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, up, copies) of rows in _READER_ORDER: each id's first row; the row of each row's
    parent (-1 for none); the rows repeating the one before (copy_rows)."""
    span_ids, parent_ids = spans["span_id"].combine_chunks(), spans["parent_span_id"].combine_chunks()
    kept = pc.index_in(span_ids, value_set=span_ids).to_numpy() == np.arange(len(span_ids))
    up = pc.index_in(parent_ids, value_set=span_ids).fill_null(-1).to_numpy().astype(np.int64)
    up[pc.equal(parent_ids, "").to_numpy(zero_copy_only=False)] = -1
    copies = np.array(copy_rows(span_ids, spans["content_hash"].to_numpy()), dtype=np.int64)
    return kept, up, copies


def _matched_hex_ids(spans: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """_matched_in_order's (kept, up, copies) of rows in any order whose ids are hex_ids, found by
    sorting the ids as integers; None for other ids. Only the rows of ids with copies (rare) are
    put in _READER_ORDER among themselves, to pick the kept one and tell the copies."""
    found, parents = hex_ids(spans["span_id"]), hex_ids(spans["parent_span_id"])
    if found is None or parents is None or not found[1].all():
        return None
    ids, (parent_values, has_parent) = found[0], parents
    rows = len(ids)
    by_id = np.argsort(ids, kind="stable")
    sorted_ids = ids[by_id]
    repeats = sorted_ids[1:] == sorted_ids[:-1]
    kept = np.ones(rows, dtype=bool)
    copies = np.zeros(0, dtype=np.int64)
    if repeats.any():
        in_repeat = np.zeros(rows, dtype=bool)
        in_repeat[1:] |= repeats
        in_repeat[:-1] |= repeats
        repeated = by_id[in_repeat]
        hashes = spans["content_hash"].to_numpy()
        # By id, then as in _READER_ORDER (start, end, content hash: the id is the same).
        ordered = repeated[np.lexsort(tuple(column[repeated] for column in (
            hashes, spans["end_ns"].to_numpy(), spans["start_ns"].to_numpy(), ids)))]
        same_id = ids[ordered[1:]] == ids[ordered[:-1]]
        kept[ordered[1:][same_id]] = False
        # content_hash covers start and end: rows alike in id and hash are next to each other in both orders.
        copies = ordered[1:][same_id & (hashes[ordered[1:]] == hashes[ordered[:-1]])]
    # The kept rows by id, each id once: where a parent id is found.
    kept_by_id = by_id[kept[by_id]]
    kept_ids = ids[kept_by_id]
    at = np.minimum(np.searchsorted(kept_ids, parent_values), len(kept_ids) - 1)
    up = np.where(has_parent & (kept_ids[at] == parent_values), kept_by_id[at], -1).astype(np.int64)
    return kept, up, copies


def _depths(up: np.ndarray) -> np.ndarray | None:
    """The depth of each row whose parent row is `up` (-1: none), by doubling; None when parents loop."""
    up = up.copy()
    depth = (up >= 0).astype(np.uint64)  # the hops from each row to `up`, its farthest ancestor known so far
    for _ in range(len(up).bit_length() + 2):  # a chain of len(up) rows is walked in bit_length + 1 doublings
        below = np.flatnonzero(up >= 0)
        if not len(below):
            return depth
        ancestors = up[below]
        depth[below] += depth[ancestors]
        up[below] = up[ancestors]
    return None  # still not at a root after more hops than rows: a loop


def span_depth_rows(trace_id: str, fill: DepthFill, treed: TreedSpans) -> pa.Table:
    """span_depths rows of `fill` from a trace's treed rows: each span once (the copy span_tree
    keeps), with its depth and duration class."""
    # Mostly every row is kept: a filter would copy every column for nothing.
    spans = treed.spans if treed.kept.all() else treed.spans.filter(pa.array(treed.kept))
    starts, ends = spans["start_ns"].to_numpy(), spans["end_ns"].to_numpy()
    size = spans.num_rows
    return pa.table({
        "trace_id": pa.repeat(trace_id, size),  # a list of `size` strings costs 20 times as much
        "span_count": np.full(size, fill.span_count, np.uint64),
        "fill": np.full(size, fill.fill, np.uint64),
        **{name: spans[name] for name in ("span_id", "parent_span_id", "attr_keys", "attr_values", "service", "name", "level")},
        "depth": treed.depth if treed.kept.all() else treed.depth[treed.kept],
        "duration_bits": bit_lengths(np.where(ends > starts, ends - starts, 0)),
        "start_ns": starts,
        "end_ns": ends,
    })


def new_fill_id() -> int:
    """A fill's id: the time it starts (ns; later fills have larger ids, which is how a fill tells
    the trace's earlier ones), its lowest 10 bits random so that processes starting together differ."""
    return time.time_ns() >> 10 << 10 | secrets.randbits(10)


def fill_span_depths(reader: TraceReader, trace_id: str, span_count: int,
                     spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET, pyramid_later: bool = False) -> DepthFill | None:
    """Reads and trees every span of `trace_id` and makes them a new fill for `span_count` rows,
    with its pyramid (pyramid_widths): stored at once, or with `pyramid_later`, the pyramid built
    in this process's pyramid worker once start_pyramids is called (the fill is read from its
    spans until then), and on a store that reads Arrow rows in-process (TraceReader.reads_unwritten)
    its spans written by that worker too, the fill read from its rows in memory until then
    (unwritten_rows). Returns that fill as it stands on return, or None when the trace has no
    span (any more). The fills it replaces are deleted RETIRE_AFTER_S after its pyramid is built."""
    made = _make_fill(reader, trace_id, span_count, spans_per_bucket)
    if made is None:
        return None
    if pyramid_later and reader.reads_unwritten:
        with _UNSTARTED_LOCK:
            _UNWRITTEN[trace_id, span_count] = made
            _UNSTARTED.append(functools.partial(_write_and_build, reader, trace_id, made))
        return made.fill
    fill = _write(reader, trace_id, made)
    if pyramid_later:
        with _UNSTARTED_LOCK:
            _UNSTARTED.append(functools.partial(_build_pyramid, reader, trace_id, fill, made.distinct_rows))
        return fill
    reader.store_pyramid(trace_id, fill, made.distinct_rows, READS.give_way)
    _retire_later(reader, trace_id, fill, made.distinct_rows)
    return replace(fill, pyramid_built=True)


@dataclass(frozen=True)
class MadeFill:
    """A new fill of a trace, not written yet (_make_fill)."""

    # Readable from `rows` (its pyramid not built): without pyramid widths, chosen as it is written.
    fill: DepthFill
    rows: pa.Table  # its span_depths rows
    distinct_starts: np.ndarray  # the starts of the distinct rows it is made of (copies left out), in no order
    spans_per_bucket: int

    @property
    def distinct_rows(self) -> int:
        return len(self.distinct_starts)

    def with_widths(self) -> DepthFill:
        """`fill` with its pyramid's widths (pyramid_widths), as it is written."""
        first, last = pyramid_widths(np.sort(self.distinct_starts), self.spans_per_bucket)
        return replace(self.fill, first_bucket_log2=first, last_bucket_log2=last)


def _make_fill(reader: TraceReader, trace_id: str, span_count: int,
               spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET) -> MadeFill | None:
    """A new fill of `trace_id` from its rows now, its pyramid not built, not written; None when
    the trace has no span (any more)."""
    fill_id = new_fill_id()
    spans = reader.window_spans(trace_id)
    if not spans.num_rows:
        return None
    treed = tree_spans(spans)
    # No pyramid widths yet (first > last); the duration classes its reads ask for, as the store would list them.
    fill = DepthFill(fill_id, span_count, 1, 0, pyramid_built=False, filled_ns=time.time_ns())
    rows = span_depth_rows(trace_id, fill, treed)
    classes = np.flatnonzero(np.bincount(rows["duration_bits"].to_numpy(), minlength=1))
    return MadeFill(replace(fill, duration_classes=tuple(map(int, classes))), rows,
                    np.delete(treed.spans["start_ns"].to_numpy(), treed.copies), spans_per_bucket)


def _write(reader: TraceReader, trace_id: str, made: MadeFill) -> DepthFill:
    """Writes `made` (readable, its pyramid not built); the fill written."""
    fill = made.with_widths()
    reader.store_span_depths(trace_id, fill, made.rows, made.distinct_rows)
    return fill


class ReadsUnderWay:
    """The window reads and searches under way in this process. A pyramid being built gives way
    to them between its statements (give_way): the embedded store runs one statement at a time,
    and a read's few statements then run back to back instead of each waiting for one of the
    pyramid's (hundreds of ms each on a 1M-span trace)."""

    # Reads that keep coming (a user panning) still let the pyramid on at this pace.
    MAX_WAIT_S = 2.0
    # Even with no read under way: one waiting for the store (not counted yet) takes it meanwhile.
    PAUSE_S = 0.005

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def give_way(self) -> None:
        """Returns once no read is under way, or after MAX_WAIT_S."""
        time.sleep(self.PAUSE_S)
        with self._changed:
            self._changed.wait_for(lambda: not self._count, timeout=self.MAX_WAIT_S)


READS = ReadsUnderWay()


# The pyramids of fills made for a read, built once the read is answered (start_pyramids): one
# at a time, in the order their fills were made. Started before the read's own statements, they
# would hold the embedded store (one statement at a time) until the last. The same worker
# deletes the fills a new one replaces (_retire).
_PYRAMIDS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlscope-pyramid")
_UNSTARTED: list[Callable[[], None]] = []
# Fills made for a read and not written yet (fill_span_depths), by trace and row count: that read
# and those meanwhile are answered from their rows in memory. The embedded store takes about as
# long to write a big fill (sorting and compressing it) as to answer the read.
_UNWRITTEN: dict[tuple[str, int], MadeFill] = {}
_UNSTARTED_LOCK = threading.Lock()


def start_pyramids() -> None:
    """Starts writing the fills made so far in this process for reads and building their pyramids."""
    with _UNSTARTED_LOCK:
        unstarted = _UNSTARTED[:]
        _UNSTARTED.clear()
    for job in unstarted:
        _PYRAMIDS.submit(job)


def unwritten_rows(trace_id: str, fill: DepthFill) -> pa.Table | None:
    """The span_depths rows of `fill` while they are not written yet (fill_span_depths), else None."""
    with _UNSTARTED_LOCK:
        made = _UNWRITTEN.get((trace_id, fill.span_count))
    return made.rows if made is not None and made.fill.fill == fill.fill else None


def _unwritten_fill(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows this process made and has not written yet, on
    reader.span_depth_fill's terms: one made over copies a retry wrote only while the trace's
    distinct rows are as many as then."""
    with _UNSTARTED_LOCK:
        made = _UNWRITTEN.get((trace_id, span_count))
    if made is None or (made.distinct_rows != span_count and reader.distinct_rows(trace_id) != made.distinct_rows):
        return None
    return made.fill


def _unwritten_fills(trace_id: str) -> list[DepthFill]:
    """The fills of `trace_id`, of any row count, this process made and has not written yet."""
    with _UNSTARTED_LOCK:
        return [made.fill for (trace, _), made in _UNWRITTEN.items() if trace == trace_id]


def _write_and_build(reader: TraceReader, trace_id: str, made: MadeFill) -> None:
    """Writes a fill made for a read, then builds its pyramid."""
    try:
        READS.give_way()
        fill = _write(reader, trace_id, made)
    except Exception:
        log.exception("writing trace %s's fill %d failed", trace_id, made.fill.fill)  # the next read fills it again
        return
    finally:
        with _UNSTARTED_LOCK:
            # Unless a fill of the same count replaced it (made once the trace's copies were merged).
            if _UNWRITTEN.get((trace_id, made.fill.span_count)) is made:
                del _UNWRITTEN[trace_id, made.fill.span_count]
    _build_pyramid(reader, trace_id, fill, made.distinct_rows)


def _build_pyramid(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    try:
        reader.store_pyramid(trace_id, fill, distinct_rows, READS.give_way)
    except Exception:
        # Reads go on using the fill's spans; the settler remakes the fill once PYRAMID_WAIT_NS has passed.
        log.exception("building the pyramid of trace %s (fill %d) failed", trace_id, fill.fill)
        return
    _retire_later(reader, trace_id, fill, distinct_rows)


# A fill replaced by one whose pyramid is built is deleted this long after: a read that chose it
# just before (in this process or another) has long finished with it. One still being read in
# this process (_HELD) is deleted later.
RETIRE_AFTER_S = 30.0
_HELD: Counter[int] = Counter()  # fill id -> reads using it now, in this process
_RETIRING: dict[int, tuple[threading.Timer, TraceReader, str, DepthFill, int]] = {}  # by the replacing fill's id
_HELD_LOCK = threading.Lock()


def _retire_later(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    """Deletes the fills `fill` replaces (reader.retire_fills) RETIRE_AFTER_S from now, in the pyramid worker."""
    timer = threading.Timer(RETIRE_AFTER_S, lambda: _submit_retire(fill.fill))
    timer.daemon = True
    with _HELD_LOCK:
        _RETIRING[fill.fill] = (timer, reader, trace_id, fill, distinct_rows)
    timer.start()


def _submit_retire(fill_id: int) -> None:
    with _HELD_LOCK:
        job = _RETIRING.pop(fill_id, None)
    if job is not None:
        job[0].cancel()
        try:
            _PYRAMIDS.submit(_retire, *job[1:])
        except RuntimeError:  # the process is ending: the trace's next fill deletes them
            pass


def _retire(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    with _HELD_LOCK:
        held = [fill_id for fill_id, reads in _HELD.items() if reads and fill_id < fill.fill]
    try:
        reader.retire_fills(trace_id, fill, distinct_rows, keep=held)
    except Exception:
        # The next fill of the trace deletes them (every earlier fill of another count).
        log.exception("deleting the fills of trace %s that fill %d replaces failed", trace_id, fill.fill)
        return
    if held:
        _retire_later(reader, trace_id, fill, distinct_rows)


@contextmanager
def _holding(fill: DepthFill) -> Iterator[DepthFill]:
    """`fill`, not deleted in this process while the caller reads it."""
    with _HELD_LOCK:
        _HELD[fill.fill] += 1
    try:
        yield fill
    finally:
        with _HELD_LOCK:
            _HELD[fill.fill] -= 1
            if not _HELD[fill.fill]:
                del _HELD[fill.fill]


def pyramids_built() -> None:
    """Returns once the refills started so far in this process are made, the pyramids of its
    fills built (or failed) and the fills they replace deleted without waiting RETIRE_AFTER_S
    (for tests: a read under way may lose its fill)."""
    _REFILLS.submit(lambda: None).result()
    start_pyramids()
    _PYRAMIDS.submit(lambda: None).result()
    with _HELD_LOCK:
        due = list(_RETIRING)
    for fill_id in due:
        _submit_retire(fill_id)
    _PYRAMIDS.submit(lambda: None).result()


# A fill whose pyramid is still missing this long after its spans were written was left so by a
# process that ended first (a 1M-span trace's pyramid takes seconds): it is made again, whole.
PYRAMID_WAIT_NS = 120 * 10**9


@dataclass(frozen=True)
class RefillPolicy:
    """When a read of a trace that has grown since its latest fill (answered from that fill)
    starts a fill of the trace as it is now, in the background: once the latest fill, pyramid
    included, is `age_over_work` times as old as it took to make, and at least `min_age_s` old.
    A live run's trace then spends at most 1 / (1 + age_over_work) of the time being filled."""

    age_over_work: float = 2.0
    min_age_s: float = 1.0

    def due(self, latest: FillRow, now_ns: int) -> bool:
        """Whether a read at `now_ns` starts a refill of the trace whose latest fill is `latest`."""
        if not latest.pyramid_built:
            # Its pyramid is under way, unless the process building it ended (the settler remakes those).
            return now_ns - latest.filled_ns >= PYRAMID_WAIT_NS
        work_ns = max(0, latest.built_ns - latest.started_ns)
        return now_ns - latest.built_ns >= max(self.min_age_s * 1e9, self.age_over_work * work_ns)


REFILL_POLICY = RefillPolicy()
# Fills started ahead of the reads that will want them (start_fill): one at a time.
_REFILLS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlscope-refill")
_REFILLING: set[str] = set()  # traces with a fill submitted and not yet made, in this process
_REFILLING_LOCK = threading.Lock()


def start_fill(reader: TraceReader, trace_id: str, first: bool = False) -> bool:
    """Submits a fill of `trace_id` at its row count then, unless that has a fill (or one is under
    way in this process), made as a window read makes one (depth_fill): for a trace that grew
    since the fill its reads are answered from (read_fill, when REFILL_POLICY says), and with
    `first` for a trace about to be read by windows that has no fill yet (a whole read of it was
    answered 413); a trace with a fill is filled again only by the reads' policy, however often
    it is read whole. Whether it submitted one."""
    with _REFILLING_LOCK:
        if trace_id in _REFILLING:
            return False
        _REFILLING.add(trace_id)
    _REFILLS.submit(_refill_submitted, reader, trace_id, first)
    return True


# Fills made ahead of reads wait while this many fills made here are not written yet: each holds
# its rows in memory (~150 bytes a span), and the reads that come make their own if need be.
MAX_UNWRITTEN = 2


def _refill_submitted(reader: TraceReader, trace_id: str, first: bool) -> None:
    try:
        READS.give_way()  # work ahead of reads comes after the reads under way
        with _UNSTARTED_LOCK:
            busy = len(_UNWRITTEN) >= MAX_UNWRITTEN
        if not busy and not (first and (reader.trace_fills(trace_id) or _unwritten_fills(trace_id))):
            _refill(reader, trace_id)
    except Exception:
        log.exception("filling trace %s ahead of its reads failed", trace_id)
    finally:
        with _REFILLING_LOCK:
            _REFILLING.discard(trace_id)


def _refill(reader: TraceReader, trace_id: str) -> None:
    """Fills `trace_id` at its row count now, unless that has a fill, then writes it (when it was
    not) and builds its pyramid."""
    span_count = reader.span_row_count(trace_id)
    if span_count and depth_fill(reader, trace_id, span_count) is not None:
        start_pyramids()


def read_window(reader: TraceReader, trace_id: str, window: tuple[int, int], resolution_ns: int) -> WindowColumns | None:
    """The spans of `trace_id` overlapping `window` as drawn at `resolution_ns` a pixel, merged by the
    store (reader.window_entries), with the viewer's attributes as ATTRIBUTE_COLUMN columns; depth
    is the span's in the whole trace. Read from one fill of span_depths (read_fill): the first
    windowed read of a trace reads and trees every span once to fill it (its pyramid is built
    after the answer), unless the settler (query/settler.py) filled it once it went quiet; later
    ones cost in proportion to the entries drawn, also while the trace grows (they read its
    latest fill, filled again in the background). With the row counts the answer covers. None
    for an unknown trace."""
    with fill_for_read(reader, trace_id) as read:
        if read is None:
            return None
        entries = reader.window_entries(trace_id, read.fill, window, resolution_ns, read.unwritten)
        entries = _with_span_details(reader, trace_id, read, entries)
    return WindowColumns(entries, span_count=read.fill.span_count, spans_now=read.spans_now)


@dataclass(frozen=True)
class FillRead:
    """What a read of a trace answers from (fill_for_read)."""

    fill: DepthFill
    spans_now: int  # the trace's rows now (more than fill.span_count while it grows)
    unwritten: pa.Table | None  # the fill's rows while they are not written yet (unwritten_rows)


@contextmanager
def fill_for_read(reader: TraceReader, trace_id: str) -> Iterator[FillRead | None]:
    """The fill a read of `trace_id` answers from (read_fill), the trace's row count now and the
    fill's rows if they are not written yet; None for an unknown trace (or one whose rows went).
    The fill is kept from deletion in this process until the read is done, pyramids being built
    wait for the read (ReadsUnderWay), and a fill the read had to make is written and its pyramid
    built once the read is done."""
    try:
        with READS.reading():
            span_count = reader.span_row_count(trace_id)
            fill = read_fill(reader, trace_id, span_count) if span_count else None
            if fill is None:
                yield None
            else:
                with _holding(fill):
                    yield FillRead(fill, span_count, unwritten_rows(trace_id, fill))
    finally:
        start_pyramids()


def read_fill(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill a read of `trace_id`, now of `span_count` rows, answers from: the one of that
    count (_fill_of); or, when there is none but the trace has another (it has grown since),
    at once the latest of those, its pyramid built first (DepthFill.span_count says which),
    starting a refill of the trace in the background when REFILL_POLICY says so (one at a time
    per trace in this process; never while a fill of it made here is not written yet: that one
    is its latest, and its pyramid still to come). A trace with no fill at all is filled now, as
    depth_fill does. None when the trace's rows went since they were counted."""
    fill = _fill_of(reader, trace_id, span_count)
    if fill is not None:
        return fill
    fills = reader.trace_fills(trace_id)
    # One of the same count made over other rows (schema 013) is no earlier state of the trace to tell apart by its count.
    earlier = [row for row in fills if row.span_count != span_count]
    unwritten = [made for made in _unwritten_fills(trace_id) if made.span_count != span_count]
    if not earlier and not unwritten:
        return depth_fill(reader, trace_id, span_count)
    if not unwritten and REFILL_POLICY.due(fills[-1], time.time_ns()):
        start_fill(reader, trace_id)
    best = max(earlier, key=lambda row: (row.pyramid_built, row.fill)) if earlier else None
    if best is not None and (best.pyramid_built or not unwritten):
        return reader.readable_fill(trace_id, best)
    return max(unwritten, key=lambda made: made.fill)


def _fill_of(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows reads use (reader.span_depth_fill), or one this
    process made and has not written yet."""
    return reader.span_depth_fill(trace_id, span_count) or _unwritten_fill(reader, trace_id, span_count)


def depth_fill(reader: TraceReader, trace_id: str, span_count: int, whole: bool = False) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows that reads use, made now when there is none
    (fill_span_depths, one fill at a time in this process): with its pyramid built once the
    caller calls start_pyramids, or with `whole` (the settler), at once; `whole` also makes again a fill
    whose pyramid is missing PYRAMID_WAIT_NS after its spans were written. None when the trace's
    rows went since they were counted."""

    def usable(fill: DepthFill | None) -> bool:
        return fill is not None and (not whole or fill.pyramid_built or time.time_ns() - fill.filled_ns < PYRAMID_WAIT_NS)

    fill = _fill_of(reader, trace_id, span_count)
    if not usable(fill):
        with _DEPTH_FILL:
            fill = _fill_of(reader, trace_id, span_count)
            if not usable(fill):
                filled = fill_span_depths(reader, trace_id, span_count, pyramid_later=not whole)
                if filled is None:
                    return None
                # Another process may have filled it at the same time: all read the same fill.
                fill = reader.span_depth_fill(trace_id, span_count) or filled
    return fill


def _with_span_details(reader: TraceReader, trace_id: str, read: FillRead, entries: Columns) -> Columns:
    """`entries` with the parent and the viewer's attributes (ATTRIBUTE_COLUMN columns) of each
    single span, '' for merged entries, read from the fill for the spans drawn as themselves only."""
    singles = [(span_id, start, end) for span_id, start, end in zip(entries["span_id"], entries["start_ns"], entries["end_ns"])
               if span_id]
    found_rows = reader.span_details(trace_id, read.fill, singles, read.unwritten)
    found = {span_id: (parent, dict(zip(keys, values)))
             for span_id, parent, keys, values in zip(
                 found_rows["span_id"], found_rows["parent_span_id"], found_rows["attr_keys"], found_rows["attr_values"])}
    details = [found.get(span_id, ("", {})) for span_id in entries["span_id"]]
    return {**entries, "parent_span_id": [parent for parent, _ in details],
            **{ATTRIBUTE_COLUMN + key: [attributes.get(key, "") for _, attributes in details] for key in WINDOW_ATTRIBUTES}}
