"""The query service's only door to the store: its reads, each one statement.

Blocking (the store's calls are); the HTTP layer runs them in worker threads. Every read goes
through the deduplicating views or merges `trace_index`, never the physical tables.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mlscope.conventions import DEFAULT_LEVEL, LEVELS
from mlscope.store.model import SPAN_DEPTHS
from mlscope.store import (
    SPAN_ROWS, TABLES, Columns, OutputCap, Span, Store, StoreError, StoreUnavailable, span_from_row, sql_string,
)

from .analysis import MetricSample, metric_sample, metric_samples_sql
from .errors import BadRequest, Busy
from .evaluations import EvaluationFilter, evaluations_sql
from .timeline import ATTRIBUTE_COLUMN, SPAN_FIELDS_COLUMN, span_fields_json
from .listing import TraceFilter, trace_list_sql, trace_summary
from .sqlguard import check_query

_SPAN_COLUMN_NAMES = SPAN_ROWS.column_names


class QueryFailed(BadRequest):
    """ClickHouse refused or failed a user's SQL (syntax, unknown column, a limit hit...)."""


# The tables writers insert into, behind the deduplicating views: only `admin` reads them.
INTERNAL_TABLES = frozenset(TABLES)
# A user's query gets a quarter of the cores (at least one), so ingest keeps the rest.
_USER_SQL_THREADS = max(1, (os.cpu_count() or 1) // 4)


@dataclass(frozen=True)
class SqlLimits:
    """Limits on users' SQL. `max_rows` and `max_bytes` (the rows' text) cap what is read of
    any query's output, whatever its shape; `max_concurrent` queries run at once, more are
    answered 429."""

    max_rows: int = 10_000
    max_bytes: int = 32 * 2**20
    max_execution_time_s: int = 10
    max_memory_bytes: int = 2 * 2**30
    max_threads: int = _USER_SQL_THREADS
    max_concurrent: int = 2


@dataclass(frozen=True)
class SqlAnswer:
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type)
    rows: list[list[Any]]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        """The answer of POST /api/sql (and of `mlscope sql` on a store it opens itself)."""
        return {
            "columns": [{"name": name, "type": ch_type} for name, ch_type in self.columns],
            "rows": self.rows,
            "truncated": self.truncated,
        }


def limit_settings(limits: SqlLimits) -> dict[str, int | str]:
    """The settings sent with a user's query. One row more than returned tells whether the
    result was cut; 'break' stops reading at the limit instead of failing. readonly=1 goes last:
    once it is set, the server refuses to change any further setting of the query."""
    return {
        "max_execution_time": limits.max_execution_time_s,
        "max_result_rows": limits.max_rows + 1,
        "max_result_bytes": limits.max_bytes,
        "result_overflow_mode": "break",
        "max_memory_usage": limits.max_memory_bytes,
        "max_threads": limits.max_threads,
        "readonly": 1,
    }


def level_condition(levels: frozenset[str]) -> str:
    """SQL keeping the spans whose stored_level is one of `levels`: a span without a known level
    counts as DEFAULT_LEVEL."""
    condition = f"level IN ({', '.join(sql_string(level) for level in sorted(levels))})"
    if DEFAULT_LEVEL in levels:
        condition = f"({condition} OR level NOT IN ({', '.join(sql_string(level) for level in LEVELS)}))"
    return condition


def _json_value(value: Any) -> Any:
    """Values as JSON can carry them: NaN and infinities become null (as the embedded engine's
    JSON output already does), so both backends answer the same."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


# toJSONString (ClickHouse 21.7) escapes a string as JSON does; older servers (Debian's 18.16)
# lack it, and SPAN_FIELDS_COLUMN is then built from the columns in Python.
JSON_IN_STORE_SINCE = (21, 7)


def _json_object_sql(keys: str, values: str) -> str:
    """JSON text of the object whose member names are the array `keys`, values `values` (strings)."""
    return ("concat('{', arrayStringConcat(arrayMap((k, v) -> concat(toJSONString(k), ':', toJSONString(v)), "
            f"{keys}, {values}), ','), '}}')")


def _json_members_sql(members: Sequence[tuple[str, str]]) -> str:
    """concat(...) of `"name":<value SQL>` for each (name, SQL of JSON text), comma-separated."""
    parts = []
    for position, (name, value) in enumerate(members):
        parts += [sql_string(("," if position else "") + f'"{name}":'), value]
    return f"concat({', '.join(parts)})"


def _span_fields_sql() -> str:
    """timeline.span_fields as JSON text (without its braces), built by the store; a damaged
    event or link text becomes {} or [] there as it does in Python."""
    def text(column: str) -> str:
        return f"toJSONString({column})"

    level = (f"if(level IN ({', '.join(sql_string(level) for level in LEVELS)}), level, "
             f"{sql_string(DEFAULT_LEVEL)})")
    event = _json_members_sql([("time_ns", "toString(t)"), ("name", "toJSONString(n)"),
                               ("attributes", "if(isValidJSON(a), a, '{}')")])
    events = (f"concat('[', arrayStringConcat(arrayMap((t, n, a) -> concat('{{', {event}, '}}'), "
              "event_times_ns, event_names, event_attrs_json), ','), ']')")
    status = _json_members_sql([("code", text("status_code")), ("message", text("status_message"))])
    scope = _json_members_sql([("name", text("scope_name")), ("version", text("scope_version"))])
    return _json_members_sql([
        *((name, text(name)) for name in ("span_id", "parent_span_id", "name", "kind", "service")),
        ("level", text(level)),
        *((name, f"toString({name})") for name in ("start_ns", "end_ns", "duration_ns")),
        ("attributes", _json_object_sql("attr_keys", "attr_values")),
        ("resource", _json_object_sql("resource_keys", "resource_values")),
        ("events", events),
        ("links", "if(isValidJSON(links_json), links_json, '[]')"),
        ("status", f"concat('{{', {status}, '}}')"),
        ("scope", f"concat('{{', {scope}, '}}')"),
    ])


def _stored_level_sql(column: str) -> str:
    """conventions.stored_level in the store: `column` when it is a level, else DEFAULT_LEVEL."""
    return f"if({column} IN ({', '.join(sql_string(level) for level in LEVELS)}), {column}, {sql_string(DEFAULT_LEVEL)})"


def _window_entries_sql(trace_id: str, span_count: int, window: tuple[int, int], resolution_ns: int) -> str:
    """span_depths rows of `trace_id` (as filled for `span_count` spans) overlapping `window`,
    as drawn at `resolution_ns` per pixel from the window's start: a span at least a pixel wide is
    an entry of its own; narrower ones are merged per (service, depth, pixel of their start), named
    after the name holding most of their time (ties: the greatest name), and given the level
    holding most of it (`dominant_level`; a single span's own). The inner query sums each name's
    time, and each level's beside it, the outer one picks the name and the level."""
    start, end, resolution = int(window[0]), int(window[1]), int(resolution_ns)
    duration = "if(end_ns > start_ns, end_ns - start_ns, 0)"
    # floor((start_ns - start) / resolution), exact, for spans starting before the window too
    pixel = (f"if(start_ns >= {start}, toInt64(intDiv(start_ns - {start}, {resolution})), "
             f"-1 - toInt64(intDiv({start} - start_ns - 1, {resolution})))")
    overlaps = f"trace_id = {sql_string(trace_id)} AND start_ns <= {end} AND end_ns >= {start}"
    # span_depths has no level (schema 009): it is joined from the spans of the same window.
    # span_rows rather than the deduplicating `spans` view: ANY JOIN takes one copy of a
    # duplicate anyway, and FINAL would merge the trace's rows on every read.
    levels = f"(SELECT span_id, level FROM span_rows WHERE {overlaps}) AS span_levels"
    # One summed-time column per level (LEVELS is fixed and short) rather than grouping by level
    # too: the groups stay those of the names, and sumMap over strings is missing on 18.16 servers.
    level_ns = [f"level_ns_{index}" for index in range(len(LEVELS))]
    level_sums = "".join(f"sumIf({duration}, {_stored_level_sql('level')} = {sql_string(level)}) AS {column}, "
                         for level, column in zip(LEVELS, level_ns))
    dominant_level = (f"arrayReduce('argMax', [{', '.join(map(sql_string, LEVELS))}], "
                      f"[{', '.join(f'(sum({column}), {sql_string(level)})' for level, column in zip(LEVELS, level_ns))}])")
    return (
        "SELECT track, depth, min(first_ns) AS start_ns, max(last_ns) AS end_ns, sum(spans) AS span_total, "
        "sum(name_ns) AS total_ns, argMax(name, (name_ns, name)) AS dominant_name, "
        f"{dominant_level} AS dominant_level, "
        "if(sum(spans) = 1, any(one_span_id), '') AS span_id FROM ("
        "SELECT service AS track, depth, name, "
        f"if({duration} >= {resolution}, span_id, '') AS wide_span_id, if({duration} >= {resolution}, 0, {pixel}) AS pixel, "
        f"min(start_ns) AS first_ns, max(end_ns) AS last_ns, count() AS spans, sum({duration}) AS name_ns, {level_sums}"
        "any(span_id) AS one_span_id "
        f"FROM {SPAN_DEPTHS.name} ANY LEFT JOIN {levels} USING span_id "
        f"WHERE span_count = {int(span_count)} AND {overlaps} "
        "GROUP BY track, depth, wide_span_id, pixel, name"
        ") GROUP BY track, depth, wide_span_id, pixel ORDER BY track, depth, start_ns, span_id")


def _select(name: str) -> str:
    """A stored column, `attribute:KEY` (timeline.ATTRIBUTE_COLUMN): the span's attribute KEY,
    else its resource's; '' when neither has it (ClickHouse reads index 0 of an array as ''),
    or SPAN_FIELDS_COLUMN (on a store that builds JSON)."""
    if name == SPAN_FIELDS_COLUMN:
        return f"{_span_fields_sql()} AS `{name}`"
    if not name.startswith(ATTRIBUTE_COLUMN):
        return name
    key = sql_string(name[len(ATTRIBUTE_COLUMN):])
    return (f"if(has(attr_keys, {key}), attr_values[indexOf(attr_keys, {key})], "
            f"resource_values[indexOf(resource_keys, {key})]) AS `{name}`")


class TraceReader:
    def __init__(self, store: Store, sql_limits: SqlLimits = SqlLimits()) -> None:
        self._store = store
        self._sql_limits = sql_limits
        self._sql_slots = threading.BoundedSemaphore(sql_limits.max_concurrent)

    def list_traces(self, trace_filter: TraceFilter) -> list[dict[str, Any]]:
        """Trace summaries, newest first; an empty list when nothing matches."""
        return [trace_summary(row) for row in self._store.execute(trace_list_sql(trace_filter)).rows]

    def trace_bounds(self, trace_id: str) -> tuple[int, int] | None:
        """(first start, last end) of `trace_id` (lowercase hex) from the trace index; None for
        a trace the store does not hold."""
        rows = self._store.execute(
            "SELECT count(), minMerge(start_ns), maxMerge(end_ns) FROM trace_index "
            f"WHERE trace_id = {sql_string(trace_id)}").rows
        return (int(rows[0][1]), int(rows[0][2])) if rows and rows[0][0] else None

    def span_count(self, trace_id: str) -> int:
        """How many distinct spans the trace index counts for `trace_id` (0 for an unknown trace),
        read before any span is: what a response's span cap is checked against."""
        rows = self._store.execute(
            f"SELECT uniqExactMerge(span_count) FROM trace_index WHERE trace_id = {sql_string(trace_id)}").rows
        return int(rows[0][0]) if rows else 0

    def has_span_depths(self, trace_id: str, span_count: int) -> bool:
        """Whether span_depths holds `trace_id`'s tree as it was at `span_count` spans."""
        rows = self._store.execute(f"SELECT count() FROM {SPAN_DEPTHS.name} WHERE trace_id = {sql_string(trace_id)} "
                                   f"AND span_count = {int(span_count)}").rows
        return bool(rows and rows[0][0])

    def store_span_depths(self, columns: Columns) -> None:
        """Adds a trace's tree to span_depths (columns as SPAN_DEPTHS declares them)."""
        self._store.insert(SPAN_DEPTHS.name, columns)

    def window_entries(self, trace_id: str, span_count: int, window: tuple[int, int], resolution_ns: int) -> Columns:
        """The level-of-detail entries of a window, merged by the store (_window_entries_sql), by
        track, depth, then start: track, depth, start_ns, end_ns, span_total, total_ns,
        dominant_name, span_id ('' for merged entries)."""
        return self._store.execute_columns(_window_entries_sql(trace_id, span_count, window, resolution_ns))

    def trace_columns(self, trace_id: str, bounds: tuple[int, int], names: Sequence[str] = _SPAN_COLUMN_NAMES,
                      levels: frozenset[str] | None = None, window: tuple[int, int] | None = None,
                      span_ids: Collection[str] | None = None) -> Columns:
        """The `names` columns of the spans of `trace_id`, by start time then span id: only the
        partitions of its `bounds` are read, and the level filter (levels as stored_level counts
        them), the time window (spans overlapping it) and a list of span ids are applied by the
        store."""
        first_day, last_day = (f"toDate(toDateTime(intDiv({time_ns}, 1000000000)))" for time_ns in bounds)
        conditions = [f"trace_id = {sql_string(trace_id)}", f"start_date >= {first_day}", f"start_date <= {last_day}"]
        if levels is not None:
            conditions.append(level_condition(levels))
        if window is not None:
            conditions.append(f"start_ns <= {int(window[1])} AND end_ns >= {int(window[0])}")
        if span_ids is not None:
            conditions.append(f"span_id IN ({', '.join(map(sql_string, span_ids)) or sql_string('')})")
        fields_here = SPAN_FIELDS_COLUMN in names and not self._store_builds_json
        selected = [name for name in names if name != SPAN_FIELDS_COLUMN] if fields_here else list(names)
        if fields_here:
            selected += [name for name in _SPAN_COLUMN_NAMES if name not in selected]
        columns = self._store.execute_columns(
            f"SELECT {', '.join(map(_select, selected))} FROM spans WHERE {' AND '.join(conditions)} ORDER BY start_ns, span_id")
        if fields_here:
            columns[SPAN_FIELDS_COLUMN] = span_fields_json(columns)
        return {name: columns.get(name, []) for name in names}

    @functools.cached_property
    def _store_builds_json(self) -> bool:
        """Whether the store's engine has the JSON functions SPAN_FIELDS_COLUMN needs (asked once)."""
        return self._store.server_version() >= JSON_IN_STORE_SINCE

    def trace_spans(self, trace_id: str) -> list[Span]:
        """Every span of `trace_id` (lowercase hex) by start time, then span id; an empty list
        for a trace the store does not hold."""
        bounds = self.trace_bounds(trace_id)
        if bounds is None:
            return []
        columns = self.trace_columns(trace_id, bounds)
        return [span_from_row({name: columns[name][row] for name in _SPAN_COLUMN_NAMES})
                for row in range(len(columns["span_id"]))]

    def metric_samples(self, services: Iterable[str], start_ns: int, end_ns: int) -> list[MetricSample]:
        """The metric samples of `services` around [start_ns, end_ns], oldest first."""
        return [metric_sample(row) for row in self._store.execute(metric_samples_sql(services, start_ns, end_ns)).rows]

    def first_column(self, statement: str) -> list[Any]:
        """The first column of a statement this package built (jaeger.py's lookups), never a user's SQL."""
        return [row[0] for row in self._store.execute(statement).rows]

    def evaluations(self, evaluation_filter: EvaluationFilter) -> list[dict[str, Any]]:
        """Evaluation rows as {column: value} (NaN, a value not measured, as None); an empty list
        when nothing matches."""
        result = self._store.execute(evaluations_sql(evaluation_filter))
        names = [column.name for column in result.columns]
        return [{name: _json_value(value) for name, value in zip(names, row)} for row in result.rows]

    def run_sql(self, query: str, internal_tables: bool = False) -> SqlAnswer:
        """Runs a user's query once the guard lets it through (RefusedQuery otherwise; the
        physical tables only with `internal_tables`, the admin scope's), apart from the insert
        path and under the limits; Busy when `max_concurrent` queries are running, QueryFailed
        when ClickHouse rejects it, StoreUnavailable passes through."""
        statement = check_query(query, hidden_tables=frozenset() if internal_tables else INTERNAL_TABLES)
        limits = self._sql_limits
        if not self._sql_slots.acquire(blocking=False):
            raise Busy(f"{limits.max_concurrent} SQL queries are running; retry when one has finished")
        try:
            capped = self._store.read_untrusted(
                statement, limit_settings(limits), OutputCap(max_rows=limits.max_rows, max_bytes=limits.max_bytes)
            )
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise QueryFailed(f"the query failed: {str(exc)[:2000]}") from exc
        finally:
            self._sql_slots.release()
        result = capped.result
        return SqlAnswer(
            columns=tuple((column.name, column.type) for column in result.columns),
            rows=[[_json_value(value) for value in row] for row in result.rows],
            truncated=capped.truncated,
        )
