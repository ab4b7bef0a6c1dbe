"""Two timelines side by side: pure, no I/O.

Layers are matched by module path (`mlscope.layer.path`), never by span name: two calls of one
module class at different places in the model are different layers, and a renamed span of the
same module is the same one. Op types are matched by name, levels by level. Each matched row has
both totals (`a_ns`, `b_ns`), `delta_ns` = b - a and `ratio` = b / a (None when a is 0); a layer
found on one side only is listed under `a_only` or `b_only`.

An evaluation is compared by its own subtree: an `mlscope evaluate` trace holds one
`mlscope.evaluation` span per configuration, and `subtree` cuts the timeline down to one of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .analysis import LayerRow, layer_table, op_types, time_by_level
from .timeline import Timeline, TimelineSpan


@dataclass(frozen=True)
class DiffRow:
    key: str  # module path, op name or level
    a_ns: int
    b_ns: int
    a_calls: int
    b_calls: int

    @property
    def delta_ns(self) -> int:
        return self.b_ns - self.a_ns

    @property
    def ratio(self) -> float | None:
        return self.b_ns / self.a_ns if self.a_ns else None


@dataclass(frozen=True)
class TraceDiff:
    a: str  # what was compared: a trace id, or trace id/span id for an evaluation
    b: str
    layers: tuple[DiffRow, ...]
    a_only: tuple[LayerRow, ...]
    b_only: tuple[LayerRow, ...]
    ops: tuple[DiffRow, ...]
    levels: tuple[DiffRow, ...]


def subtree(timeline: Timeline, span_id: str) -> Timeline | None:
    """The span `span_id` and everything under it, as a timeline of its own (depths from 0);
    None when the timeline has no such span."""
    items = timeline.spans
    start = next((index for index, item in enumerate(items) if item.span.span_id == span_id), None)
    if start is None:
        return None
    base = items[start].depth
    end = next((index for index in range(start + 1, len(items)) if items[index].depth <= base), len(items))
    kept = tuple(TimelineSpan(item.span, item.depth - base, item.self_ns) for item in items[start:end])
    return Timeline(timeline.trace_id, kept, timeline.warnings)


def _matched(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]], keys: Iterable[str]) -> tuple[DiffRow, ...]:
    """Rows for `keys`, each side's (total, calls) or zeros; largest |delta| first."""
    rows = [DiffRow(key, *_pair(a.get(key), b.get(key))) for key in keys]
    rows.sort(key=lambda row: (-abs(row.delta_ns), row.key))
    return tuple(rows)


def _pair(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int, int, int]:
    a_ns, a_calls = a or (0, 0)
    b_ns, b_calls = b or (0, 0)
    return a_ns, b_ns, a_calls, b_calls


def diff_timelines(a: Timeline, b: Timeline, a_label: str = "", b_label: str = "") -> TraceDiff:
    a_layers = {row.path: row for row in layer_table(a)}
    b_layers = {row.path: row for row in layer_table(b)}
    a_ops = {row.name: (row.self_ns, row.calls) for row in op_types(a)}
    b_ops = {row.name: (row.self_ns, row.calls) for row in op_types(b)}
    a_levels = {row.level: (row.total_ns, row.spans) for row in time_by_level(a)}
    b_levels = {row.level: (row.total_ns, row.spans) for row in time_by_level(b)}
    return TraceDiff(
        a=a_label or a.trace_id,
        b=b_label or b.trace_id,
        layers=_matched({p: (r.total_ns, r.calls) for p, r in a_layers.items()},
                        {p: (r.total_ns, r.calls) for p, r in b_layers.items()},
                        a_layers.keys() & b_layers.keys()),
        a_only=tuple(row for path, row in a_layers.items() if path not in b_layers),
        b_only=tuple(row for path, row in b_layers.items() if path not in a_layers),
        ops=_matched(a_ops, b_ops, a_ops.keys() | b_ops.keys()),
        levels=_matched(a_levels, b_levels, a_levels.keys() | b_levels.keys()),
    )


def _row_json(row: DiffRow, key_name: str) -> dict[str, Any]:
    return {key_name: row.key, "a_ns": row.a_ns, "b_ns": row.b_ns, "delta_ns": row.delta_ns,
            "ratio": row.ratio, "a_calls": row.a_calls, "b_calls": row.b_calls}


def _layer_json(row: LayerRow) -> dict[str, Any]:
    return {"path": row.path, "type": row.type, "calls": row.calls, "total_ns": row.total_ns}


def diff_json(trace_diff: TraceDiff) -> dict[str, Any]:
    """The body of GET /api/diff (CONTRACT.md). Op times are self times (an op's children are
    ops too, which the total would count twice); layer and level times are totals."""
    return {
        "a": trace_diff.a,
        "b": trace_diff.b,
        "layers": [_row_json(row, "path") for row in trace_diff.layers],
        "a_only": [_layer_json(row) for row in trace_diff.a_only],
        "b_only": [_layer_json(row) for row in trace_diff.b_only],
        "ops": [_row_json(row, "name") for row in trace_diff.ops],
        "levels": [_row_json(row, "level") for row in trace_diff.levels],
    }
