"""Span rows -> one trace's timeline: the span tree in pre-order with depth and self time.

Pure: no I/O. The stored rows are first fixed up by small ordered adjusters (in the manner of
Jaeger's query adjusters); every problem they meet becomes a warning on the timeline, never a
failed request. Then the tree is ordered:

- pre-order: a parent before its children, siblings by start time, ties by span id;
- a span whose parent is not in the trace is kept as a root (depth 0), with a warning;
- `self_ns` is the span's duration minus the union of its children's intervals clipped to the
  span, so overlapping (parallel) children are not counted twice. It is a property of the whole
  trace: filtering levels changes depths, not self times;
- `levels`: only spans of those levels are kept; a kept span whose ancestors were dropped hangs
  from its nearest kept ancestor.

`raw=True` skips the adjusters and the tree: the rows as stored (duplicates and unknown levels
included), ordered by start time then span id, each at depth 0 with `self_ns == duration_ns`,
and no warnings. It shows what the collector wrote when the adjusted view looks wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mlscope.conventions import stored_level
from mlscope.store.model import Span


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


# --- adjusters: list of spans -> fixed list of spans, plus warnings ---------------------------

Adjuster = Callable[[list[Span]], tuple[list[Span], list[str]]]


def dedupe_span_ids(spans: list[Span]) -> tuple[list[Span], list[str]]:
    """Keeps the first copy of a span id: the tree needs unique ids, and the store's view
    already folds exact retries, so a duplicate here is a client reusing an id."""
    kept: dict[str, Span] = {}
    copies: dict[str, int] = {}
    for span in spans:
        if span.span_id in kept:
            copies[span.span_id] = copies.get(span.span_id, 1) + 1
        else:
            kept[span.span_id] = span
    warnings = [f"span {span_id}: {count} spans share this id; kept the first" for span_id, count in copies.items()]
    return list(kept.values()), warnings


def normalize_levels(spans: list[Span]) -> tuple[list[Span], list[str]]:
    """An empty level is the documented default (no warning); an unknown one is worth one."""
    adjusted, warnings = [], []
    for span in spans:
        level = stored_level(span.level)
        if level != span.level:
            if span.level:
                warnings.append(f"span {span.span_id}: unknown level {span.level!r}, shown as {level}")
            span = replace(span, level=level)
        adjusted.append(span)
    return adjusted, warnings


def break_parent_cycles(spans: list[Span]) -> tuple[list[Span], list[str]]:
    """Makes a root of the earliest span of every parent loop (a -> b -> a, or a span that is
    its own parent): spans in a loop are reachable from no root and would vanish otherwise."""
    by_id = {span.span_id: span for span in spans}
    settled: set[str] = set()  # ids whose parent chain is known to end at a root
    warnings = []
    for span in spans:
        path: list[str] = []
        on_path: set[str] = set()
        current = span.span_id
        while current not in settled:
            if current in on_path:
                loop = path[path.index(current):]
                breaker = min((by_id[span_id] for span_id in loop), key=Span.sort_key)
                by_id[breaker.span_id] = replace(breaker, parent_span_id="")
                chain = " -> ".join([*loop, current])
                warnings.append(f"span {breaker.span_id}: parent chain loops ({chain}); shown as a root")
                break
            path.append(current)
            on_path.add(current)
            parent = by_id[current].parent_span_id
            if not parent or parent not in by_id:  # a root or an orphan: the chain ends
                break
            current = parent
        settled.update(path)
    return [by_id[span.span_id] for span in spans], warnings


def warn_missing_parents(spans: list[Span]) -> tuple[list[Span], list[str]]:
    ids = {span.span_id for span in spans}
    warnings = [
        f"span {span.span_id}: parent {span.parent_span_id} not in trace"
        for span in spans
        if span.parent_span_id and span.parent_span_id not in ids
    ]
    return spans, warnings


def warn_outside_parent(spans: list[Span]) -> tuple[list[Span], list[str]]:
    """Clock skew between machines shows as a child outside its parent: worth knowing, but the
    times are kept as measured (self time clips the child to the parent)."""
    by_id = {span.span_id: span for span in spans}
    warnings = []
    for span in spans:
        parent = by_id.get(span.parent_span_id) if span.parent_span_id else None
        if parent and (span.start_ns < parent.start_ns or span.end_ns > parent.end_ns):
            warnings.append(f"span {span.span_id}: outside the time of its parent {parent.span_id}")
    return spans, warnings


# Order matters: later adjusters rely on unique ids and known levels.
ADJUSTERS: tuple[Adjuster, ...] = (
    dedupe_span_ids,
    normalize_levels,
    warn_missing_parents,
    break_parent_cycles,
    warn_outside_parent,
)


def adjust(spans: Iterable[Span], adjusters: Sequence[Adjuster] = ADJUSTERS) -> tuple[list[Span], list[str]]:
    adjusted, warnings = list(spans), []
    for adjuster in adjusters:
        adjusted, found = adjuster(adjusted)
        warnings.extend(found)
    return adjusted, warnings


# --- the tree ---------------------------------------------------------------------------------


def _children_of(spans: Sequence[Span], parent_of: Mapping[str, str]) -> tuple[list[Span], dict[str, list[Span]]]:
    """(roots, parent id -> children), each list by start time then span id."""
    ids = {span.span_id for span in spans}
    roots: list[Span] = []
    children: dict[str, list[Span]] = {}
    for span in sorted(spans, key=Span.sort_key):
        parent = parent_of[span.span_id]
        if parent and parent in ids:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    return roots, children


def _pre_order(roots: list[Span], children: Mapping[str, list[Span]]) -> list[tuple[Span, int]]:
    """(span, depth) in pre-order; iterative, as deep traces would exhaust Python's stack."""
    ordered = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        span, depth = stack.pop()
        ordered.append((span, depth))
        stack.extend((child, depth + 1) for child in reversed(children.get(span.span_id, ())))
    return ordered


def self_time(span: Span, children: Iterable[Span]) -> int:
    """Duration minus the union of the children's intervals clipped to the span."""
    covered = 0
    reach = span.start_ns  # the end of the union so far; children come sorted by start
    for child in sorted(children, key=Span.sort_key):
        start = max(child.start_ns, reach)
        end = min(child.end_ns, span.end_ns)
        if end > start:
            covered += end - start
            reach = end
    return max(0, span.end_ns - span.start_ns - covered)


def _nearest_kept_parents(ordered: Sequence[tuple[Span, int]], keep: Callable[[Span], bool]) -> dict[str, str]:
    """span id -> id of its nearest kept ancestor ("" if none), for the kept spans."""
    parents: dict[str, str] = {}
    ancestors: list[tuple[Span, bool]] = []  # the current root-to-here path, with kept flags
    for span, depth in ordered:
        del ancestors[depth:]
        kept = keep(span)
        if kept:
            parents[span.span_id] = next((a.span_id for a, a_kept in reversed(ancestors) if a_kept), "")
        ancestors.append((span, kept))
    return parents


def build_timeline(
    trace_id: str, rows: Iterable[Span], levels: frozenset[str] | None = None, raw: bool = False
) -> Timeline:
    def keep(span: Span) -> bool:
        return levels is None or stored_level(span.level) in levels

    if raw:
        stored = sorted(rows, key=Span.sort_key)
        spans = tuple(TimelineSpan(span, 0, span.duration_ns) for span in stored if keep(span))
        return Timeline(trace_id, spans, ())

    spans, warnings = adjust(rows)
    roots, children = _children_of(spans, {span.span_id: span.parent_span_id for span in spans})
    ordered = _pre_order(roots, children)
    self_ns = {span.span_id: self_time(span, children.get(span.span_id, ())) for span in spans}
    if levels is not None:
        parents = _nearest_kept_parents(ordered, keep)
        kept = [span for span, _ in ordered if span.span_id in parents]
        ordered = _pre_order(*_children_of(kept, parents))
    timeline_spans = tuple(TimelineSpan(span, depth, self_ns[span.span_id]) for span, depth in ordered)
    return Timeline(trace_id, timeline_spans, tuple(warnings))


# --- rendering --------------------------------------------------------------------------------


def span_json(item: TimelineSpan) -> dict[str, Any]:
    span = item.span
    return {
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": span.kind,
        "service": span.service,
        "level": span.level,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ns": span.duration_ns,
        "self_ns": item.self_ns,
        "depth": item.depth,
        "attributes": dict(span.attributes),
        "resource": dict(span.resource),
        "events": [{"time_ns": e.time_ns, "name": e.name, "attributes": e.attributes} for e in span.events],
        "links": list(span.links),
        "status": {"code": span.status_code, "message": span.status_message},
        "scope": {"name": span.scope_name, "version": span.scope_version},
    }


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    return {
        "trace_id": timeline.trace_id,
        "spans": [span_json(item) for item in timeline.spans],
        "warnings": list(timeline.warnings),
    }
