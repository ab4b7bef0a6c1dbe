"""One trace read for the API: what to read from the store for a request, then the tree.

Blocking (the reader is); the HTTP layer runs these in worker threads. The filters go to the
store: with none, one read of every column; with levels, a depth limit or a time window, a read
of the columns the tree needs (ids, parents, times) for the whole trace (self times and nearest
kept ancestors need every span), then every column of the kept spans only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlscope.conventions import PROCESS_ORPHANED, stored_level
from mlscope.store import SPAN_ROWS, Columns

from .errors import TooLarge
from .reader import RowsOverLimit, TraceReader
from .timeline import ATTRIBUTE_COLUMN, SpanTree, span_tree

TREE_COLUMNS = ("span_id", "parent_span_id", "start_ns", "end_ns", "level")
ORPHANED_COLUMN = ATTRIBUTE_COLUMN + PROCESS_ORPHANED
# Up to this many kept spans are named to the store by id; more are read by level and window
# and picked here (a longer IN list costs the store more than the rows it saves).
MAX_IDS_IN_QUERY = 10_000



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
