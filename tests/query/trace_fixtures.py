"""Span rows for query and viewer tests: one readable builder, the same rows for the pure tests
(through span_from_row) and for both store backends (through store.insert)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlscope.store import Columns, Span, Store, empty_columns, span_from_row

T0 = 1_764_000_000_000_000_123  # 2025-11-24, ns; odd on purpose: beyond 2**53, exact only as integers
MS = 1_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def row(span_id: str, parent: str, name: str, start_ms: float, end_ms: float, level: str = "application", *,
        trace_id: str = TRACE, service: str = "svc", attributes: dict[str, str] | None = None) -> dict[str, Any]:
    """A span_rows row; times in ms after T0, ids as given (tests use short readable ids)."""
    start, end = T0 + int(start_ms * MS), T0 + int(end_ms * MS)
    attributes = attributes or {}
    return dict(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind="internal",
        service=service, level=level, start_ns=start, end_ns=end, duration_ns=max(0, end - start),
        status_code="unset", status_message="", scope_name="tests", scope_version="1",
        attr_keys=list(attributes), attr_values=list(attributes.values()),
        resource_keys=["service.name"], resource_values=[service],
        event_times_ns=[start], event_names=["started"], event_attrs_json=['{"step": 1}'], links_json="[]",
    )


# A known 3-level trace. relu overlaps conv1, so predict's children cover 20..70 ms (50 ms,
# not 60): predict's self time is 80 - 50 = 30 ms; the pipeline's is 100 - 80 - 5 = 15 ms.
KNOWN = [
    row("00000000000000a1", "", "pipeline", 0, 100, "application",
        attributes={"mlscope.model.name": "resnet18", "mlscope.framework.name": "pytorch"}),
    row("00000000000000b2", "00000000000000a1", "predict", 10, 90, "model"),
    row("00000000000000c4", "00000000000000b2", "relu", 40, 70, "layer"),
    row("00000000000000c3", "00000000000000b2", "conv1", 20, 50, "layer"),
    row("00000000000000d5", "00000000000000a1", "postprocess", 90, 95, "application"),
]
KNOWN_SHAPE = [  # (name, depth, self ms) in pre-order
    ("pipeline", 0, 15), ("predict", 1, 30), ("conv1", 2, 30), ("relu", 2, 30), ("postprocess", 1, 5),
]


def spans(rows: Sequence[dict[str, Any]]) -> list[Span]:
    return [span_from_row(r) for r in rows]


def columns_of(rows: Sequence[dict[str, Any]]) -> Columns:
    columns = empty_columns("span_rows")
    for r in rows:
        for name, values in columns.items():
            values.append(r[name])
    return columns


def insert(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    store.insert("span_rows", columns_of(rows))
