"""The row model: every table a writer inserts into, declared once, and the span readers build.

Each `Table` lists the columns a writer supplies (name and ClickHouse type), in the order of its
CREATE TABLE in schema/*.sql, leaving out the DEFAULT columns the store computes itself;
tests/store/test_row_model.py parses the schema and fails when the two differ.

Both directions go through these declarations. Writers (the collector's OTLP decoder, dispatch)
build `Columns`: one Python list per column, bound by column name, the cheapest shape for both
insert paths (Arrow for chdb, columnar native protocol for clickhouse-server). Readers turn a row
of the `spans` view back into a `Span` with `span_from_row`. Values never leave this module's
vocabulary: ids are lowercase hex, times are integer nanoseconds since the Unix epoch, attribute
values are strings.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Columns = dict[str, list[Any]]
"""Column name -> that column's values, one per row, in the table's column order."""


@dataclass(frozen=True)
class Column:
    """A column of a table or of a query's result."""

    name: str
    type: str  # as ClickHouse writes it: "String", "Array(UInt64)"


@dataclass(frozen=True)
class Table:
    """A physical table writers insert into; readers use its deduplicating view."""

    name: str
    columns: tuple[Column, ...]
    partitioned_by_month_of: str = ""
    """The nanosecond column whose month names a row's partition (PARTITION BY toYYYYMM of its
    date); "" for an unpartitioned table."""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def empty_columns(self) -> Columns:
        return {column.name: [] for column in self.columns}

    def column_definitions(self) -> str:
        """The body of a CREATE TABLE: `name Type, ...`."""
        return ", ".join(f"{column.name} {column.type}" for column in self.columns)


def _table(name: str, *columns: tuple[str, str], partitioned_by_month_of: str = "") -> Table:
    return Table(name, tuple(Column(column, column_type) for column, column_type in columns), partitioned_by_month_of)


# schema/001_spans.sql (start_date is computed from start_ns); read through the `spans` view.
SPAN_ROWS = _table(
    "span_rows",
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
    partitioned_by_month_of="start_ns",
)

# schema/003_metrics.sql (date is computed from time_ns); read through the `metrics` view.
METRIC_POINTS = _table(
    "metric_points",
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
    partitioned_by_month_of="time_ns",
)

# schema/006_dispatch.sql: a predictor's heartbeat (`predictors` view) and a job's state change
# (`jobs` view).
PREDICTOR_HEARTBEATS = _table(
    "predictor_heartbeats",
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
    ("owner", "String"),  # schema/008: the fingerprint of the token that registered it
)

JOB_STATES = _table(
    "job_states",
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

# schema/010_span_depth_pyramid.sql: the windowed read's cache, filled by the query service
# (query/windows.py read_window): each span's depth, the pyramid of merged buckets, the fills.
SPAN_DEPTHS = _table(
    "span_depths",
    ("trace_id", "String"),
    ("span_count", "UInt64"),
    ("fill", "UInt64"),
    ("span_id", "String"),
    ("parent_span_id", "String"),
    ("attr_keys", "Array(String)"),
    ("attr_values", "Array(String)"),
    ("service", "String"),
    ("name", "String"),
    ("level", "String"),
    ("depth", "UInt64"),
    ("duration_bits", "UInt64"),
    ("start_ns", "UInt64"),
    ("end_ns", "UInt64"),
)
SPAN_DEPTH_BUCKETS = _table(
    "span_depth_buckets",
    ("trace_id", "String"),
    ("span_count", "UInt64"),
    ("fill", "UInt64"),
    ("bucket_log2", "UInt64"),
    ("bucket", "UInt64"),
    ("service", "String"),
    ("depth", "UInt64"),
    ("name", "String"),
    ("level", "String"),
    ("spans", "UInt64"),
    ("total_ns", "UInt64"),
    ("first_ns", "UInt64"),
    ("last_ns", "UInt64"),
    ("span_id", "String"),
)
SPAN_DEPTH_TILES = _table(
    "span_depth_tiles",
    ("trace_id", "String"),
    ("span_count", "UInt64"),
    ("fill", "UInt64"),
    ("bucket_log2", "UInt64"),
    ("bucket", "UInt64"),
    ("service", "String"),
    ("depth", "UInt64"),
    ("name", "String"),
    ("name_ns", "UInt64"),
    ("level", "String"),
    ("level_ns", "UInt64"),
    ("spans", "UInt64"),
    ("total_ns", "UInt64"),
    ("first_ns", "UInt64"),
    ("last_ns", "UInt64"),
    ("span_id", "String"),
)
SPAN_DEPTH_FILLS = _table(
    "span_depth_fills",
    ("trace_id", "String"),
    ("span_count", "UInt64"),
    ("fill", "UInt64"),
    ("first_bucket_log2", "UInt64"),
    ("last_bucket_log2", "UInt64"),
    ("filled_ns", "UInt64"),
    ("distinct_rows", "UInt64"),
    ("pyramid_pending", "UInt64"),
)

# Not in the .sql files: Store.migrate() creates it from this declaration before applying them.
SCHEMA_MIGRATIONS = _table("schema_migrations", ("version", "UInt64"), ("name", "String"), ("applied_ns", "UInt64"))

TABLES: dict[str, Table] = {
    table.name: table for table in (SPAN_ROWS, METRIC_POINTS, PREDICTOR_HEARTBEATS, JOB_STATES, SPAN_DEPTHS,
                                SPAN_DEPTH_BUCKETS, SPAN_DEPTH_TILES,
                                SPAN_DEPTH_FILLS, SCHEMA_MIGRATIONS)
}
"""Every table a writer inserts into, by name (span_depths, span_depth_buckets, span_depth_tiles,
span_depth_fills: the query service, a cache of each trace's tree). The other tables of the
schema (`trace_index`, `evaluation_rows`) are filled by materialized views over span_rows."""


def empty_columns(table: str) -> Columns:
    return TABLES[table].empty_columns()


def row_count(columns: Columns) -> int:
    first = next(iter(columns.values()), [])
    return len(first)


def extend_columns(target: Columns, source: Columns) -> None:
    """Appends `source` to `target` column by column (both of the same table)."""
    for name, values in source.items():
        target[name].extend(values)


MONTHS_PER_INSERT = 50
"""At most this many UTC months of rows go into one insert block. ClickHouse refuses a block
that touches more than max_partitions_per_insert_block (100) partitions; the store's time zone
can move a row into the neighbouring month, so each UTC month counts twice."""


def _utc_month(time_ns: int) -> int:
    moment = time.gmtime(time_ns // 1_000_000_000)
    return moment.tm_year * 12 + moment.tm_mon


def blocks_by_partition(table: Table, columns: Columns) -> list[Columns]:
    """`columns` as insert blocks of at most MONTHS_PER_INSERT months each: one block (the same
    object) when its rows span fewer, else the rows grouped by month, months in order."""
    times = columns[table.partitioned_by_month_of] if table.partitioned_by_month_of else []
    if not times or _utc_month(max(times)) - _utc_month(min(times)) < MONTHS_PER_INSERT:
        return [columns]
    rows_by_month: dict[int, list[int]] = defaultdict(list)
    for row, time_ns in enumerate(times):
        rows_by_month[_utc_month(time_ns)].append(row)
    months = sorted(rows_by_month)
    blocks = []
    for first in range(0, len(months), MONTHS_PER_INSERT):
        rows = [row for month in months[first : first + MONTHS_PER_INSERT] for row in rows_by_month[month]]
        blocks.append({name: [values[row] for row in rows] for name, values in columns.items()})
    return blocks


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]]


# --- row -> span ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    time_ns: int
    name: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Span:
    """One stored span (a row of the `spans` view), attributes as key -> value."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    level: str
    start_ns: int
    end_ns: int
    duration_ns: int
    status_code: str
    status_message: str
    scope_name: str
    scope_version: str
    attributes: Mapping[str, str]
    resource: Mapping[str, str]
    events: tuple[Event, ...]
    links: tuple[Mapping[str, Any], ...]

    def sort_key(self) -> tuple[int, str]:
        return (self.start_ns, self.span_id)


def _loads(text: str, default: Any) -> Any:
    """JSON text written by the collector; a damaged value must not cost the whole trace."""
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def span_from_row(row: Mapping[str, Any]) -> Span:
    """A `spans` row (column name -> value, as the store returns it; SPAN_ROWS' columns) -> Span."""
    return Span(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        name=row["name"],
        kind=row["kind"],
        service=row["service"],
        level=row["level"],
        start_ns=int(row["start_ns"]),
        end_ns=int(row["end_ns"]),
        duration_ns=int(row["duration_ns"]),
        status_code=row["status_code"],
        status_message=row["status_message"],
        scope_name=row["scope_name"],
        scope_version=row["scope_version"],
        attributes=dict(zip(row["attr_keys"], row["attr_values"])),
        resource=dict(zip(row["resource_keys"], row["resource_values"])),
        events=tuple(
            Event(int(time_ns), name, _loads(attrs, {}))
            for time_ns, name, attrs in zip(row["event_times_ns"], row["event_names"], row["event_attrs_json"])
        ),
        links=tuple(_loads(row["links_json"], [])),
    )
