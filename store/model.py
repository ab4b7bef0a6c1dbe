"""The row model shared by every writer and reader of the store.

Writers (the collector) build `Columns`: one Python list per column, in the order given here,
which is the cheapest shape for both insert paths (Arrow for chdb, columnar native protocol for
clickhouse-server). Values never leave this module's vocabulary: ids are lowercase hex, times are
integer nanoseconds since the Unix epoch, attribute values are strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (column, ClickHouse type) as in schema/001_spans.sql, minus the DEFAULT column start_date.
SPAN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trace_id", "String"),
    ("span_id", "String"),
    ("parent_span_id", "String"),
    ("name", "String"),
    ("kind", "String"),
    ("service", "String"),
    ("level", "String"),
    ("start_ns", "UInt64"),
    ("end_ns", "UInt64"),
    ("duration_ns", "UInt64"),
    ("status_code", "String"),
    ("status_message", "String"),
    ("scope_name", "String"),
    ("scope_version", "String"),
    ("attr_keys", "Array(String)"),
    ("attr_values", "Array(String)"),
    ("resource_keys", "Array(String)"),
    ("resource_values", "Array(String)"),
    ("event_times_ns", "Array(UInt64)"),
    ("event_names", "Array(String)"),
    ("event_attrs_json", "Array(String)"),
    ("links_json", "String"),
)

# As in schema/003_metrics.sql, minus the DEFAULT column date.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("service", "String"),
    ("name", "String"),
    ("description", "String"),
    ("unit", "String"),
    ("kind", "String"),
    ("time_ns", "UInt64"),
    ("start_time_ns", "UInt64"),
    ("value", "Float64"),
    ("count", "UInt64"),
    ("bucket_bounds", "Array(Float64)"),
    ("bucket_counts", "Array(UInt64)"),
    ("attr_keys", "Array(String)"),
    ("attr_values", "Array(String)"),
    ("resource_keys", "Array(String)"),
    ("resource_values", "Array(String)"),
    ("scope_name", "String"),
    ("series_hash", "UInt64"),
)

# As in schema/006_dispatch.sql: a predictor's heartbeat and a job's state change.
PREDICTOR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("predictor_id", "String"),
    ("name", "String"),
    ("host", "String"),
    ("pid", "UInt64"),
    ("system", "String"),
    ("system_name", "String"),
    ("system_description", "String"),
    ("frameworks", "Array(String)"),
    ("execution_providers", "Array(String)"),
    ("label_keys", "Array(String)"),
    ("label_values", "Array(String)"),
    ("started_ns", "UInt64"),
    ("seen_ns", "UInt64"),
)

JOB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "String"),
    ("run_id", "String"),
    ("predictor_id", "String"),
    ("created_ns", "UInt64"),
    ("updated_ns", "UInt64"),
    ("state", "String"),
    ("message", "String"),
    ("results", "UInt64"),
    ("request", "String"),
)

# The physical tables writers insert into; readers use the deduplicating views (`spans`,
# `metrics`, `predictors`, `jobs`).
TABLE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "span_rows": SPAN_COLUMNS,
    "metric_points": METRIC_COLUMNS,
    "predictor_heartbeats": PREDICTOR_COLUMNS,
    "job_states": JOB_COLUMNS,
    "schema_migrations": (("version", "UInt64"), ("name", "String"), ("applied_ns", "UInt64")),
}

Columns = dict[str, list[Any]]


def empty_columns(table: str) -> Columns:
    return {name: [] for name, _ in TABLE_COLUMNS[table]}


def row_count(columns: Columns) -> int:
    first = next(iter(columns.values()), [])
    return len(first)


def extend_columns(target: Columns, source: Columns) -> None:
    """Appends `source` to `target` column by column (both of the same table)."""
    for name, values in source.items():
        target[name].extend(values)


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]]
