"""Span rows -> one trace's timeline: the span tree in pre-order with depth and self time.

Pure: no I/O, and over columns (`span_tree`: row indexes, no object per span). The stored rows
are first fixed up (duplicate ids, missing parents, parent loops, unknown levels, children
outside their parent, in the manner of Jaeger's query adjusters); every problem met becomes a
warning on the timeline, never a failed request. Then the tree is ordered:

- pre-order: a parent before its children, siblings by start time, ties by span id;
- a span whose parent is not in the trace is kept as a root (depth 0), with a warning;
- `self_ns` is the span's duration minus the union of its children's intervals clipped to the
  span, so overlapping (parallel) children are not counted twice. It is a property of the whole
  trace: filtering levels changes depths, not self times;
- `levels`: only spans of those levels are kept; a kept span whose ancestors were dropped hangs
  from its nearest kept ancestor; `max_depth` then leaves out what lies deeper.

Rendered as the documented JSON, as the viewer's compact columnar form, or, for a time window at
a resolution, as a level of detail: spans narrower than a pixel merged per track and depth.

`raw=True` skips the adjusters and the tree: the rows as stored (duplicates and unknown levels
included), ordered by start time then span id, each at depth 0 with `self_ns == duration_ns`,
and no warnings. It shows what the collector wrote when the adjusted view looks wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
import json
from itertools import compress, islice, repeat
from operator import eq, itemgetter, le
from dataclasses import dataclass, replace
from typing import Any

from mlscope.conventions import (
    LAYER_PATH, LAYER_TYPE, PROCESS_ORPHANED, PROCESS_PID, THREAD_ID, THREAD_NAME, stored_level,
)
from mlscope.store.model import Columns, Span


@dataclass(frozen=True)
class TimelineSpan:
    span: Span
    depth: int
    self_ns: int


@dataclass(frozen=True)
class Timeline:
    trace_id: str
    spans: tuple[TimelineSpan, ...]
    warnings: tuple[str, ...]


# --- the tree, over columns -------------------------------------------------------------------
#
# Rows are indexes into parallel columns (ids, parents, starts, ends): no object per span, so the
# same core serves the JSON timeline, the compact form and the windowed read.


@dataclass(frozen=True)
class SpanTree:
    """One trace's rows in tree order. `order` holds row indexes in pre-order (a row left out of
    it was a duplicate id, or filtered); `depths` is aligned with `order`; `self_ns` is by row."""

    order: list[int]
    depths: list[int]
    self_ns: list[int]
    warnings: tuple[str, ...]
    # (span id, parent id) of each span outside its parent's time, each also in `warnings`.
    outside_parent: tuple[tuple[str, str], ...] = ()

    def excusing(self, span_ids: Collection[str]) -> SpanTree:
        """This tree without the outside-its-parent warnings of `span_ids`: processes marked as
        outliving their parent (PROCESS_ORPHANED) do so by design, not by clock skew."""
        excused = {outside_parent_warning(span, up) for span, up in self.outside_parent if span in span_ids}
        if not excused:
            return self
        return replace(self, warnings=tuple(warning for warning in self.warnings if warning not in excused),
                       outside_parent=tuple(pair for pair in self.outside_parent if pair[0] not in span_ids))


def outside_parent_warning(span_id: str, parent_id: str) -> str:
    return f"span {span_id}: outside the time of its parent {parent_id}"


def _covered_self(start: int, end: int, rows: Iterable[int], starts: Sequence[int], ends: Sequence[int]) -> int:
    """[start, end]'s length minus the union of the intervals of `rows` (sorted by start), each
    clipped to it: one loop over row indexes, no tuple per child."""
    covered = 0
    reach = start  # the end of the union so far
    for row in rows:
        low = starts[row]
        high = ends[row]
        if low < reach:
            low = reach
        if high > end:
            high = end
        if high > low:
            covered += high - low
            reach = high
    return max(0, end - start - covered)


def self_time(span: Span, children: Iterable[Span]) -> int:
    """Duration minus the union of the children's intervals clipped to the span."""
    ordered = sorted(children, key=Span.sort_key)
    return _covered_self(span.start_ns, span.end_ns, range(len(ordered)),
                         [child.start_ns for child in ordered], [child.end_ns for child in ordered])


def _first_copies(span_ids: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> tuple[dict[str, int], list[str]]:
    """(span id -> the row kept of its copies, a warning per id sent more than once): of the
    copies of an id, the one that starts first (then ends first, then comes first)."""
    row_of = dict(zip(span_ids, range(len(span_ids))))  # the last copy of each id
    if len(row_of) == len(span_ids):  # no copies: the common case, in C
        return row_of, []
    row_of = {}
    copies: dict[str, int] = {}
    for row, span_id in enumerate(span_ids):
        first = row_of.get(span_id)
        if first is None:
            row_of[span_id] = row
            continue
        # The store keeps a retry once, so every copy here was sent with other content.
        copies[span_id] = copies.get(span_id, 1) + 1
        if (starts[row], ends[row]) < (starts[first], ends[first]):
            row_of[span_id] = row
    return row_of, [f"span {span_id}: sent {count} times with different content; kept the earliest"
                    for span_id, count in copies.items()]


def _break_loops(kept: Sequence[int], parent: list[int], starts: Sequence[int], span_ids: Sequence[str],
                 settled: list[bool]) -> list[str]:
    """Makes a root of the earliest span of every parent loop among `kept` (`parent` changed in
    place); `settled` marks the rows already known to hang from a root. A warning per loop."""
    warnings = []
    walked_from = [-1] * len(parent)  # the row whose walk up last passed here: on its path
    for row in kept:
        if settled[row]:
            continue
        path: list[int] = []
        current = row
        while not settled[current]:
            if walked_from[current] == row:
                loop = path[path.index(current):]
                breaker = min(loop, key=lambda r: (starts[r], span_ids[r]))
                parent[breaker] = -1
                chain = " -> ".join(span_ids[r] for r in [*loop, current])
                warnings.append(f"span {span_ids[breaker]}: parent chain loops ({chain}); shown as a root")
                break
            path.append(current)
            walked_from[current] = row
            if parent[current] < 0:
                break
            current = parent[current]
        for visited in path:
            settled[visited] = True
    return warnings


def _in_start_order(starts: Sequence[int], span_ids: Sequence[str]) -> bool:
    """Whether the rows are sorted by start time then span id (as the store returns them)."""
    later = islice(starts, 1, None)
    if not all(map(le, starts, later)):
        return False
    ties = compress(range(len(starts) - 1), map(eq, starts, islice(starts, 1, None)))
    return all(span_ids[row] <= span_ids[row + 1] for row in ties)


def _tree_lists(rows_by_start: Sequence[int], parent: Sequence[int]) -> tuple[list[int], dict[int, list[int]]]:
    """(roots, parent row -> its children) of `rows_by_start` (sorted by start time then span id),
    each under parent[row] (a row among them) or a root; children in start order."""
    roots: list[int] = []
    children: dict[int, list[int]] = {}
    for row in rows_by_start:
        up = parent[row]
        if up < 0:
            roots.append(row)
        else:
            below = children.get(up)
            if below is None:
                children[up] = [row]
            else:
                below.append(row)
    return roots, children


def _pre_order(roots: Sequence[int], children: dict[int, list[int]]) -> tuple[list[int], list[int]]:
    """(rows in pre-order, their depths) from `roots` down; iterative, as deep traces would
    exhaust Python's stack. Rows on a parent loop are not reached."""
    order: list[int] = []
    depths: list[int] = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        row, depth = stack.pop()
        order.append(row)
        depths.append(depth)
        below = children.get(row)
        if below:  # most rows are leaves
            stack.extend([(child, depth + 1) for child in reversed(below)])
    return order, depths


def _nearest_kept_parents(order: Sequence[int], depths: Sequence[int], keep: Sequence[bool], size: int) -> list[int]:
    """Row -> row of its nearest kept ancestor (-1 if none), for the kept rows."""
    parents = [-1] * size
    ancestors: list[int] = []  # kept rows on the current root-to-here path
    ancestor_depths: list[int] = []
    for row, depth in zip(order, depths):
        while ancestor_depths and ancestor_depths[-1] >= depth:
            ancestors.pop()
            ancestor_depths.pop()
        if keep[row]:
            parents[row] = ancestors[-1] if ancestors else -1
            ancestors.append(row)
            ancestor_depths.append(depth)
    return parents


def span_tree(span_ids: Sequence[str], parent_ids: Sequence[str], starts: Sequence[int], ends: Sequence[int],
              keep: Sequence[bool] | None = None, max_depth: int | None = None) -> SpanTree:
    """The pre-order of a trace's rows with depth and self time. `keep` (by row) leaves only
    those rows, each under its nearest kept ancestor; `max_depth` then cuts what lies deeper.
    Self times are those of the whole trace: filtering changes depths, not self times.

    Fix-ups: of the copies of an id, the one that starts first (then ends first, then comes
    first) is kept; a parent not in the trace makes a root; every parent loop is broken at its
    earliest span; a child outside its parent's time is worth a warning (clock skew), nothing more."""
    size = len(span_ids)
    row_of, warnings = _first_copies(span_ids, starts, ends)
    kept = sorted(row_of.values())
    parent = list(map(row_of.get, parent_ids, repeat(-1)))
    if "" in row_of:  # a span with no id: '' names no parent
        parent = [up if up_id else -1 for up, up_id in zip(parent, parent_ids)]
    for row in kept:
        if parent[row] < 0 and parent_ids[row]:
            warnings.append(f"span {span_ids[row]}: parent {parent_ids[row]} not in trace")
    if len(kept) < size:  # a dropped copy's parent is never read; its row is never walked
        for row in set(range(size)).difference(kept):
            parent[row] = -1
    by_start = kept if _in_start_order(starts, span_ids) else sorted(kept, key=list(zip(starts, span_ids)).__getitem__)
    roots, children = _tree_lists(by_start, parent)
    order, depths = _pre_order(roots, children)
    if len(order) < len(kept):  # the rows not reached from a root hang from parent loops
        reached = [False] * size
        for row in order:
            reached[row] = True
        warnings.extend(_break_loops(kept, parent, starts, span_ids, reached))
        roots, children = _tree_lists(by_start, parent)
        order, depths = _pre_order(roots, children)
    outside = [(span_ids[row], span_ids[parent[row]]) for row in kept
               if parent[row] >= 0 and (starts[row] < starts[parent[row]] or ends[row] > ends[parent[row]])]
    warnings.extend(outside_parent_warning(span, up) for span, up in outside)
    self_ns = [end - start if end > start else 0 for start, end in zip(starts, ends)]
    for up, rows in children.items():
        self_ns[up] = _covered_self(starts[up], ends[up], rows, starts, ends)
    if keep is not None:
        parent = _nearest_kept_parents(order, depths, keep, size)
        order, depths = _pre_order(*_tree_lists([row for row in by_start if keep[row]], parent))
    if max_depth is not None:
        shallow = [index for index, depth in enumerate(depths) if depth <= max_depth]
        order, depths = [order[index] for index in shallow], [depths[index] for index in shallow]
    return SpanTree(order, depths, self_ns, tuple(warnings), tuple(outside))


def level_warnings(span_ids: Sequence[str], levels: Sequence[str], rows: Iterable[int]) -> list[str]:
    """An empty level is the documented default (no warning); an unknown one is worth one."""
    return [f"span {span_ids[row]}: unknown level {levels[row]!r}, shown as {stored_level(levels[row])}"
            for row in rows if levels[row] and stored_level(levels[row]) != levels[row]]


def build_timeline(
    trace_id: str, rows: Iterable[Span], levels: frozenset[str] | None = None, raw: bool = False
) -> Timeline:
    def keep(span: Span) -> bool:
        return levels is None or stored_level(span.level) in levels

    if raw:
        stored = sorted(rows, key=Span.sort_key)
        spans = tuple(TimelineSpan(span, 0, span.duration_ns) for span in stored if keep(span))
        return Timeline(trace_id, spans, ())

    stored = list(rows)
    span_ids = [span.span_id for span in stored]
    tree = span_tree(span_ids, [span.parent_span_id for span in stored], [span.start_ns for span in stored],
                     [span.end_ns for span in stored], keep=None if levels is None else [keep(s) for s in stored])
    tree = tree.excusing({span.span_id for span in stored if span.attributes.get(PROCESS_ORPHANED) == "true"})
    warnings = level_warnings(span_ids, [span.level for span in stored], sorted(set(tree.order)))
    spans = tuple(
        TimelineSpan(replace(stored[row], level=stored_level(stored[row].level)), depth, tree.self_ns[row])
        for row, depth in zip(tree.order, tree.depths)
    )
    return Timeline(trace_id, spans, (*warnings, *tree.warnings))


# --- rendering from columns ------------------------------------------------------------------


def _loads(text: str, default: Any) -> Any:
    """JSON text written by the collector; a damaged value must not cost the whole trace."""
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


SPAN_FIELDS_COLUMN = "json:span_fields"
"""A column name asking the reader for each span's documented JSON members other than self_ns
and depth (those come from the tree), as the text between an object's braces: the store builds
it where it can, so the response is joined from text rather than encoded from one dict per span."""

TIMELINE_COLUMNS = ("span_id", "parent_span_id", "start_ns", "end_ns", "duration_ns", SPAN_FIELDS_COLUMN)
"""The columns timeline_json reads."""


def span_fields(columns: Columns, row: int) -> dict[str, Any]:
    """One span of GET /api/traces/{id} (the documented form) without self_ns and depth, from a
    `spans` row's columns: what the store's SPAN_FIELDS_COLUMN holds, where the store cannot build it."""
    return {
        "span_id": columns["span_id"][row],
        "parent_span_id": columns["parent_span_id"][row],
        "name": columns["name"][row],
        "kind": columns["kind"][row],
        "service": columns["service"][row],
        "level": stored_level(columns["level"][row]),
        "start_ns": columns["start_ns"][row],
        "end_ns": columns["end_ns"][row],
        "duration_ns": columns["duration_ns"][row],
        "attributes": dict(zip(columns["attr_keys"][row], columns["attr_values"][row])),
        "resource": dict(zip(columns["resource_keys"][row], columns["resource_values"][row])),
        "events": [{"time_ns": time_ns, "name": name, "attributes": _loads(attributes, {})}
                   for time_ns, name, attributes in zip(columns["event_times_ns"][row], columns["event_names"][row],
                                                        columns["event_attrs_json"][row])],
        "links": _loads(columns["links_json"][row], []),
        "status": {"code": columns["status_code"][row], "message": columns["status_message"][row]},
        "scope": {"name": columns["scope_name"][row], "version": columns["scope_version"][row]},
    }


def span_fields_json(columns: Columns) -> list[str]:
    """SPAN_FIELDS_COLUMN computed here from every column of `spans`, row by row."""
    return [json.dumps(span_fields(columns, row), ensure_ascii=False)[1:-1] for row in range(len(columns["span_id"]))]


def timeline_json(trace_id: str, columns: Columns, tree: SpanTree) -> str:
    """GET /api/traces/{id} as JSON text, from TIMELINE_COLUMNS: each span's stored members
    joined with its self time and depth, no dict per span."""
    fields, self_ns = columns[SPAN_FIELDS_COLUMN], tree.self_ns
    spans = ",".join(f'{{"self_ns":{self_ns[row]},"depth":{depth},{fields[row]}}}'
                     for row, depth in zip(tree.order, tree.depths))
    warnings = json.dumps(list(tree.warnings), ensure_ascii=False)
    return f'{{"trace_id":{json.dumps(trace_id)},"spans":[{spans}],"warnings":{warnings}}}'


def _parent_positions(depths: Sequence[int]) -> list[int]:
    """For a pre-order's depths: each entry's parent position in it, -1 for a root."""
    parents, path = [], []  # path: positions of the current root-to-here chain
    for position, depth in enumerate(depths):
        del path[depth:]
        parents.append(path[-1] if path else -1)
        path.append(position)
    return parents


class StringTable:
    """Strings interned in order of first use: each value becomes its index in `strings`."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._index: dict[str, int] = {}

    def indexes(self, values: Iterable[str], absent: str | None = None) -> list[int]:
        """Each value's index, interning the new ones; a value equal to `absent` is -1 instead
        (an attribute the span does not have). The loops over every value are the C ones of
        dict.fromkeys and map: a trace's values are many, its distinct strings few."""
        values = values if isinstance(values, (list, tuple)) else list(values)
        index = self._index
        for value in dict.fromkeys(values):
            if value != absent and value not in index:
                index[value] = len(self.strings)
                self.strings.append(value)
        lookup = index if absent is None else {**index, absent: -1}
        return list(map(lookup.__getitem__, values))


VIEWER_ATTRIBUTES = {"process_pid": PROCESS_PID, "thread_id": THREAD_ID, "thread_name": THREAD_NAME,
                     "layer_path": LAYER_PATH, "layer_type": LAYER_TYPE}
"""The attributes the viewer draws with (tracks by process and thread, layer labels): the compact
form carries them; the viewer fetches the rest of a span when it is selected."""
ATTRIBUTE_COLUMN = "attribute:"
"""A column name `attribute:KEY` asks the reader for a span's attribute KEY (else its resource's,
'' when neither has it), computed in the store rather than reading every attribute."""

COMPACT_COLUMNS = ("span_id", "parent_span_id", "name", "service", "level", "start_ns", "end_ns", "duration_ns",
                   *(ATTRIBUTE_COLUMN + key for key in VIEWER_ATTRIBUTES.values()))
"""The columns compact_json reads (the rest is for the documented JSON)."""


def _in_order(order: Sequence[int]) -> Callable[[Sequence[Any]], list[Any]]:
    """A column's values at the rows of `order`, in that order (itemgetter: one C call a column)."""
    if len(order) < 2:
        return lambda column: [column[row] for row in order]
    pick = itemgetter(*order)
    return lambda column: list(pick(column))


def _stored_levels(levels: Iterable[str]) -> dict[str, str]:
    """stored_level of each distinct value (a trace has a handful, and spans by the hundred thousand)."""
    return {level: stored_level(level) for level in set(levels)}


def compact_json(trace_id: str, columns: Columns, tree: SpanTree) -> dict[str, Any]:
    """?format=compact: the timeline as parallel arrays in pre-order, names, services and levels
    as indexes into `strings`, times as offsets from `origin_ns` (a decimal string, exact) so
    that every number stays below 2**53 and reads exactly in JavaScript."""
    in_order = _in_order(tree.order)
    starts = in_order(columns["start_ns"])
    origin = min(starts, default=0)
    table = StringTable()
    return {
        "trace_id": trace_id,
        "format": "compact",
        "origin_ns": str(origin),
        "span_id": in_order(columns["span_id"]),
        "parent": _parent_positions(tree.depths),
        "name": table.indexes(in_order(columns["name"])),
        "service": table.indexes(in_order(columns["service"])),
        "level": table.indexes(list(map(_stored_levels(columns["level"]).__getitem__, in_order(columns["level"])))),
        "start_ns": [start - origin for start in starts],
        "duration_ns": in_order(columns["duration_ns"]),
        "self_ns": in_order(tree.self_ns),
        "depth": tree.depths,
        "attributes": {key: table.indexes(in_order(columns[ATTRIBUTE_COLUMN + key]), absent="")
                       for key in VIEWER_ATTRIBUTES.values()},
        "strings": table.strings,
        "warnings": list(tree.warnings),
    }


# --- level of detail --------------------------------------------------------------------------


class WindowColumns(dict[str, list[Any]]):
    """A window read's columns (windows.read_window) and the trace's row counts they cover:
    `span_count`, those of the fill they were read from, and `spans_now`, the trace's now (more
    while a growing trace is being filled again)."""

    def __init__(self, columns: Columns, span_count: int, spans_now: int) -> None:
        super().__init__(columns)
        self.span_count = span_count
        self.spans_now = spans_now


def window_json(trace_id: str, window: tuple[int, int], resolution_ns: int, entries: Columns) -> dict[str, Any]:
    """/window's answer from the store's merged entries (reader.window_entries): a span wide
    enough to draw (count 1, its span_id, level, parent and the viewer's attributes), or spans
    narrower than the resolution on one track and depth merged: their count, summed time and the
    name and level holding most of it. From a window read (WindowColumns), also the trace's rows
    the entries cover (`span_count`) and its rows now (`spans_now`): fewer while a growing trace
    is filled again."""
    keys = list(VIEWER_ATTRIBUTES.values())

    def entry(row: int) -> dict[str, Any]:
        fields = {name: entries[column][row] for name, column in _WINDOW_ENTRY_FIELDS}
        if fields["span_id"]:
            fields["parent_span_id"] = entries["parent_span_id"][row]
            fields["attributes"] = {key: value for key in keys if (value := entries[ATTRIBUTE_COLUMN + key][row])}
        return fields

    return {
        "trace_id": trace_id,
        "start_ns": window[0], "end_ns": window[1], "resolution_ns": resolution_ns,
        **({"span_count": entries.span_count, "spans_now": entries.spans_now} if isinstance(entries, WindowColumns) else {}),
        "entries": [entry(row) for row in range(len(entries["span_id"]))],
    }


_WINDOW_ENTRY_FIELDS = (("track", "track"), ("depth", "depth"), ("start_ns", "start_ns"), ("end_ns", "end_ns"),
                        ("count", "span_total"), ("total_ns", "total_ns"), ("name", "dominant_name"),
                        ("level", "dominant_level"), ("span_id", "span_id"))
"""window_json's fields of every entry, each from its column of reader.window_entries."""
