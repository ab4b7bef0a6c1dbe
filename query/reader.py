"""The query service's only door to the store: its reads, each one statement.

Blocking (the store's calls are); the HTTP layer runs them in worker threads. Reads go through
the deduplicating views or merge `trace_index`, but for a trace's own rows: those come from
span_rows, whose copies of a span the reader collapses itself (trace_columns), and the windowed
read's cache, which only this package writes.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa

from mlscope.conventions import DEFAULT_LEVEL, LEVELS
from mlscope.store.model import SPAN_DEPTH_BUCKETS, SPAN_DEPTH_FILLS, SPAN_DEPTH_TILES, SPAN_DEPTHS
from mlscope.store import (
    ARROW_ROWS, SPAN_ROWS, TABLES, Columns, OutputCap, Span, Store, StoreError, StoreUnavailable, span_from_row,
    sql_string,
)

from .analysis import MetricSample, metric_sample, metric_samples_sql
from .errors import BadRequest, Busy
from .evaluations import EvaluationFilter, evaluations_sql
from .timeline import ATTRIBUTE_COLUMN, SPAN_FIELDS_COLUMN, VIEWER_ATTRIBUTES, span_fields_json
from .listing import TraceFilter, trace_list_sql, trace_summary
from .sqlguard import check_query

_SPAN_COLUMN_NAMES = SPAN_ROWS.column_names


class RowsOverLimit(Exception):
    """A read given `max_rows` would read more rows than that (trace_columns)."""


# ClickHouse's code for a read past max_rows_to_read (TOO_MANY_ROWS), the same on every version.
_TOO_MANY_ROWS = 158


class QueryFailed(BadRequest):
    """ClickHouse refused or failed a user's SQL (syntax, unknown column, a limit hit...)."""


# What a user's SQL without the admin scope may not name, and what each is (the refusal says so):
# the tables writers insert into, behind the deduplicating views, and dispatch's views, which hold
# where each predictor runs (host, pid), its owner's token fingerprint and the jobs' manifests
# (CONTRACT.md: predictors and jobs are admin's, as GET /api/predictors and /api/jobs are).
_INTERNAL_TABLE = "an internal table (read the views spans, metrics, evaluations; the admin scope may read it)"
_ADMIN_VIEW = ("the admin scope's view (where each predictor runs, whose token it holds, the jobs' manifests), "
               "as GET /api/predictors and /api/jobs are")
HIDDEN_FROM_READERS = MappingProxyType({**{name: _INTERNAL_TABLE for name in TABLES},
                                        "predictors": _ADMIN_VIEW, "jobs": _ADMIN_VIEW})
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

    event = _json_members_sql([("time_ns", "toString(t)"), ("name", "toJSONString(n)"),
                               ("attributes", "if(isValidJSON(a), a, '{}')")])
    events = (f"concat('[', arrayStringConcat(arrayMap((t, n, a) -> concat('{{', {event}, '}}'), "
              "event_times_ns, event_names, event_attrs_json), ','), ']')")
    status = _json_members_sql([("code", text("status_code")), ("message", text("status_message"))])
    scope = _json_members_sql([("name", text("scope_name")), ("version", text("scope_version"))])
    return _json_members_sql([
        *((name, text(name)) for name in ("span_id", "parent_span_id", "name", "kind", "service")),
        ("level", text(_stored_level_sql("level"))),
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


@dataclass(frozen=True)
class DepthFill:
    """One complete fill of a trace's span_depths (span_depth_fills): its id, the trace's row
    count in span_rows it was made for (`span_count`) and the bucket widths its pyramid holds,
    2^first_bucket_log2 to 2^last_bucket_log2 ns (none when first > last)."""

    fill: int
    span_count: int
    first_bucket_log2: int
    last_bucket_log2: int
    # The duration classes its spans fall in (span_depths.duration_bits); every class when unknown.
    duration_classes: tuple[int, ...] = tuple(range(65))
    # Whether its pyramid is complete (schema 014): until then reads take every window from its
    # spans. `filled_ns`: when its spans were (0 when unknown).
    pyramid_built: bool = True
    filled_ns: int = 0

    def bucket_log2_at(self, resolution_ns: int) -> int | None:
        """The pyramid width read at `resolution_ns` a pixel: the widest held that is no wider
        than a pixel (so a bucket lies across at most two pixels); None when the pyramid holds
        none that narrow, or is not built yet (the window's spans are read themselves)."""
        width = min(max(1, int(resolution_ns)).bit_length() - 1, self.last_bucket_log2)
        return width if width >= self.first_bucket_log2 and self.pyramid_built else None


@dataclass(frozen=True)
class FillRow:
    """One fill of a trace as span_depth_fills lists it (TraceReader.trace_fills): what a read of
    a trace that has grown since chooses from, and what says when to fill it again."""

    fill: int
    span_count: int
    first_bucket_log2: int
    last_bucket_log2: int
    distinct_rows: int
    pyramid_built: bool
    filled_ns: int  # when its spans were written (it became readable)
    built_ns: int  # when its pyramid was (0: not yet)

    @property
    def started_ns(self) -> int:
        """When it was started: a fill's id is that time, its lowest 10 bits random (traces.new_fill_id)."""
        return self.fill >> 10 << 10


# The viewer's attributes a fill keeps of each span: what a span drawn as itself carries.
WINDOW_ATTRIBUTES = tuple(VIEWER_ATTRIBUTES.values())
# Fills whose duration classes a reader remembers (a few numbers each); past that it starts over.
_CACHED_FILLS = 4096
_DURATION_SQL = "toUInt64(if(end_ns > start_ns, end_ns - start_ns, 0))"


def _fill_condition(trace_id: str, fill: int) -> str:
    return f"trace_id = {sql_string(trace_id)} AND fill = {int(fill)}"


def _span_rows_condition(fill: DepthFill, window: tuple[int, int], narrow_log2: int,
                         skipped: tuple[int, int] | None) -> str:
    """span_depths rows of `fill` overlapping `window`, as ranges of its key (duration class,
    start): a span of class c lasts less than 2^c ns, so it reaches the window only if it starts
    after the window's start - 2^c. The classes up to `narrow_log2` share one range (reading at
    most 2^narrow_log2 ns of spans before the window for nothing); the others each have theirs,
    one per class the fill holds (each range costs the store's key analysis more than a few rows
    read). `skipped`: the starts, first to last, whose spans of those narrow classes the pyramid
    holds instead."""
    start, end = window
    narrow = [duration_class for duration_class in fill.duration_classes if duration_class <= narrow_log2]
    ranges = []
    if narrow:
        lowest = max(0, start - 2**max(narrow) + 1)
        parts = [(lowest, end)] if skipped is None else [(lowest, min(end, skipped[0] - 1)), (max(lowest, skipped[1] + 1), end)]
        ranges += [f"(duration_bits <= {max(narrow)} AND start_ns BETWEEN {low} AND {high})" for low, high in parts if low <= high]
    for duration_class in fill.duration_classes:
        if duration_class > narrow_log2 and max(0, start - 2**duration_class + 1) <= end:
            ranges.append(f"(duration_bits = {duration_class} AND start_ns BETWEEN {max(0, start - 2**duration_class + 1)} AND {end})")
    return f"end_ns >= {start} AND ({' OR '.join(ranges) or '0'})"


def depths_source(unwritten: pa.Table | None) -> str:
    """Where a query reads a fill's span_depths rows: the table, or `unwritten`, the fill's rows
    before they are written (ARROW_ROWS, run by Store.execute_columns_over)."""
    return SPAN_DEPTHS.name if unwritten is None else ARROW_ROWS


def _window_entries_sql(trace_id: str, fill: DepthFill, window: tuple[int, int], resolution_ns: int,
                        source: str) -> str:
    """The rows of `fill` overlapping `window`, as drawn at `resolution_ns` per pixel from the
    window's start: a span at least a pixel wide is an entry of its own; narrower ones are merged
    per (service, depth, pixel), named after the name holding most of their time (ties: the
    greatest name), and given the level holding most of it (`dominant_level`; a single span's
    own).

    Zoomed out, the narrow spans come from the pyramid (DepthFill.bucket_log2_at): each bucket
    wholly inside the window, per name and level, lands in the pixel of its first start, so a
    span near a pixel's edge may be merged into the next pixel's entry; the spans at the window's
    edges, in part-covered buckets, and those at least a bucket wide come from span_depths and
    fall in the pixel of their own start. The innermost query lists both as (count, summed time)
    rows, the next one sums each name's time and each level's beside it, the outer one picks the
    name and the level. A group of one span (one row, then) keeps its id, parent and the viewer's
    attributes (attr_keys/attr_values). `source`: where the fill's span_depths rows are (depths_source)."""
    start, end, resolution = int(window[0]), int(window[1]), max(1, int(resolution_ns))

    def pixel(time_ns: str) -> str:
        # floor((time_ns - start) / resolution), exact, for spans starting before the window too
        return (f"if({time_ns} >= {start}, toInt64(intDiv({time_ns} - {start}, {resolution})), "
                f"-1 - toInt64(intDiv({start} - {time_ns} - 1, {resolution})))")

    bucket_log2 = fill.bucket_log2_at(resolution)
    first_bucket = last_bucket = 0
    if bucket_log2 is not None:
        first_bucket = -(-max(0, start) >> bucket_log2)
        last_bucket = ((end + 1) >> bucket_log2) - 1
        if first_bucket > last_bucket:
            bucket_log2 = None
    skipped = None if bucket_log2 is None else (first_bucket << bucket_log2, ((last_bucket + 1) << bucket_log2) - 1)
    narrow_log2 = resolution.bit_length() - 1 if bucket_log2 is None else bucket_log2
    wide = f"{_DURATION_SQL} >= {resolution}"
    rows = [
        f"SELECT service AS track, depth, name, level, if({wide}, span_id, '') AS wide_span_id, "
        f"if({wide}, toInt64(0), {pixel('start_ns')}) AS pixel, start_ns AS first_ns, end_ns AS last_ns, "
        f"toUInt64(1) AS spans, {_DURATION_SQL} AS time_ns, time_ns AS name_ns, time_ns AS level_ns, "
        f"span_id AS one_span_id FROM {source} "
        f"WHERE {_fill_condition(trace_id, fill.fill)} AND {_span_rows_condition(fill, (start, end), narrow_log2, skipped)}"]
    if bucket_log2 is not None:
        rows.append(
            f"SELECT service AS track, depth, name, level, '' AS wide_span_id, {pixel('first_ns')} AS pixel, first_ns, "
            f"last_ns, spans, total_ns AS time_ns, name_ns, level_ns, span_id AS one_span_id FROM {SPAN_DEPTH_TILES.name} "
            f"WHERE {_fill_condition(trace_id, fill.fill)} AND bucket_log2 = {bucket_log2} "
            f"AND bucket BETWEEN {first_bucket} AND {last_bucket}")
    return (
        "SELECT track, depth, min(first_ns) AS start_ns, max(last_ns) AS end_ns, sum(spans) AS span_total, "
        "sum(group_ns) AS total_ns, argMax(name, (name_ns, name)) AS dominant_name, "
        f"{_dominant_level_sql('sum')} AS dominant_level, if(sum(spans) = 1, any(one_span_id), '') AS span_id FROM ("
        "SELECT track, depth, name, wide_span_id, pixel, min(first_ns) AS first_ns, max(last_ns) AS last_ns, "
        f"sum(spans) AS spans, sum(time_ns) AS group_ns, sum(name_ns) AS name_ns, {_level_sums_sql('level_ns')}"
        "any(one_span_id) AS one_span_id "
        f"FROM ({' UNION ALL '.join(rows)}) "
        "GROUP BY track, depth, wide_span_id, pixel, name"
        ") GROUP BY track, depth, wide_span_id, pixel ORDER BY track, depth, start_ns, span_id")


# One summed-time column per level (LEVELS is fixed and short) rather than grouping by level too:
# the groups stay those of the names, and sumMap over strings is missing on 18.16 servers.
_LEVEL_NS = tuple(f"level_ns_{index}" for index in range(len(LEVELS)))


def _level_sums_sql(time_ns: str) -> str:
    """`time_ns` summed per level, as the columns _LEVEL_NS (each followed by ', ')."""
    return "".join(f"sumIf({time_ns}, level = {sql_string(level)}) AS {column}, " for level, column in zip(LEVELS, _LEVEL_NS))


def _dominant_level_sql(merge: str) -> str:
    """The level whose _LEVEL_NS column, merged by the aggregate `merge`, is greatest (ties: the
    greatest level)."""
    times = ", ".join(f"({merge}({column}), {sql_string(level)})" for level, column in zip(LEVELS, _LEVEL_NS))
    return f"arrayReduce('argMax', [{', '.join(map(sql_string, LEVELS))}], [{times}])"


def _bucket_sql(trace_id: str, fill: DepthFill, bucket_log2: int) -> str:
    """INSERT of `fill`'s pyramid level of width 2^bucket_log2 ns: from its spans when it is the
    first level, else from the level below, halved, and the spans of the class that became
    narrower than a bucket."""
    columns = ", ".join(SPAN_DEPTH_BUCKETS.column_names)
    keys = "trace_id, span_count, fill, service, depth, name, level"
    condition = _fill_condition(trace_id, fill.fill)
    narrow = f"duration_bits <= {bucket_log2}" if bucket_log2 == fill.first_bucket_log2 else f"duration_bits = {bucket_log2}"
    sources = [f"SELECT {keys}, bitShiftRight(start_ns, {bucket_log2}) AS bucket, toUInt64(1) AS spans, "
               f"{_DURATION_SQL} AS total_ns, start_ns AS first_ns, end_ns AS last_ns, span_id "
               f"FROM {SPAN_DEPTHS.name} WHERE {condition} AND {narrow}"]
    if bucket_log2 > fill.first_bucket_log2:
        sources.append(f"SELECT {keys}, bitShiftRight(bucket, 1) AS bucket, spans, total_ns, first_ns, last_ns, span_id "
                       f"FROM {SPAN_DEPTH_BUCKETS.name} WHERE {condition} AND bucket_log2 = {bucket_log2 - 1}")
    return (f"INSERT INTO {SPAN_DEPTH_BUCKETS.name} ({columns}) "
            f"SELECT trace_id, span_count, fill, toUInt64({bucket_log2}) AS bucket_log2, bucket, service, depth, name, "
            "level, sum(spans), sum(total_ns), min(first_ns), max(last_ns), any(span_id) "
            f"FROM ({' UNION ALL '.join(sources)}) GROUP BY {keys}, bucket")


def _tile_sql(trace_id: str, fill: DepthFill, bucket_log2: int) -> str:
    """INSERT of `fill`'s tiles of width 2^bucket_log2 ns from its buckets: per track, depth and
    bucket, the name holding most of the time (ties: the greatest name) and the level holding most."""
    columns = ", ".join(SPAN_DEPTH_TILES.column_names)
    keys = "trace_id, span_count, fill, bucket_log2, bucket, service, depth"
    return (f"INSERT INTO {SPAN_DEPTH_TILES.name} ({columns}) "
            f"SELECT {keys}, argMax(name, (name_ns, name)), argMax(name_ns, (name_ns, name)), "
            f"{_dominant_level_sql('sum')}, arrayReduce('max', [{', '.join(f'sum({column})' for column in _LEVEL_NS)}]), "
            "sum(spans), sum(name_ns), min(first_ns), max(last_ns), any(span_id) FROM ("
            f"SELECT {keys}, name, sum(spans) AS spans, sum(total_ns) AS name_ns, {_level_sums_sql('total_ns')}"
            "min(first_ns) AS first_ns, max(last_ns) AS last_ns, any(span_id) AS span_id "
            f"FROM {SPAN_DEPTH_BUCKETS.name} WHERE {_fill_condition(trace_id, fill.fill)} AND bucket_log2 = {bucket_log2} "
            f"GROUP BY {keys}, name) GROUP BY {keys}")


# What tells the copies of one span apart: the columns of span_rows' key after the trace id.
_COPY_KEY = ("span_id", "content_hash")
# Reads of a trace's rows order them so (content_hash last: copies of a span re-sent with other
# content, of which span_tree keeps one, come out in the same order on every read).
TRACE_ORDER_COLUMNS = ("start_ns", "span_id", "end_ns", "content_hash")
_TRACE_ORDER = f"ORDER BY {', '.join(TRACE_ORDER_COLUMNS)}"


def copy_rows(span_ids: Sequence[Any], hashes: Sequence[int] | np.ndarray) -> list[int]:
    """The rows (ordered by _TRACE_ORDER, so that the rows of one _COPY_KEY are next to each
    other) that repeat the row before: the copies FINAL would have merged. Most reads have none,
    and one C-speed pass over the hashes (a list, or a numpy array of a whole column) says so."""
    if isinstance(hashes, np.ndarray):
        same_hash = (np.flatnonzero(hashes[1:] == hashes[:-1]) + 1).tolist()
    elif any(map(operator.eq, hashes, hashes[1:])):
        same_hash = [row for row in range(1, len(hashes)) if hashes[row] == hashes[row - 1]]
    else:
        return []
    return [row for row in same_hash if span_ids[row] == span_ids[row - 1]]


def _without_copies(columns: Columns) -> Columns:
    """`columns` (with _COPY_KEY's) without copy_rows."""
    copies = set(copy_rows(columns["span_id"], columns["content_hash"]))
    if not copies:
        return columns
    kept = [row for row in range(len(columns["span_id"])) if row not in copies]
    return {name: [values[row] for row in kept] for name, values in columns.items()}


def _select(name: str) -> str:
    """A stored column, `attribute:KEY` (timeline.ATTRIBUTE_COLUMN): the span's attribute KEY,
    else its resource's; '' when neither has it (ClickHouse reads index 0 of an array as ''),
    or SPAN_FIELDS_COLUMN (on a store that builds JSON)."""
    if name == SPAN_FIELDS_COLUMN:
        return f"{_span_fields_sql()} AS `{name}`"
    if not name.startswith(ATTRIBUTE_COLUMN):
        return name
    return f"{_attribute_sql(name[len(ATTRIBUTE_COLUMN):])} AS `{name}`"


def _attribute_sql(key: str) -> str:
    """The span's attribute `key`, else its resource's ('' when neither has it)."""
    key = sql_string(key)
    return f"if(has(attr_keys, {key}), attr_values[indexOf(attr_keys, {key})], resource_values[indexOf(resource_keys, {key})])"


# Up to this many rows in span_rows, a trace's distinct spans are counted over its rows (span_count).
_DISTINCT_OVER_ROWS = 50_000


class TraceReader:
    def __init__(self, store: Store, sql_limits: SqlLimits = SqlLimits()) -> None:
        self._store = store
        self._sql_limits = sql_limits
        self._sql_slots = threading.BoundedSemaphore(sql_limits.max_concurrent)
        # fill id -> the duration classes of its spans: a fill never changes once readable.
        self._duration_classes: dict[int, tuple[int, ...]] = {}

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

    def span_count(self, trace_id: str, row_count: int | None = None) -> int:
        """How many distinct spans `trace_id` has (0 for an unknown trace), read before any span
        is. `row_count`: its span_row_count, when the caller has it. A trace of few rows has its
        span ids counted over those rows, in time proportional to them; a bigger one is counted
        by the trace index, whose distinct count costs what the sets of the index granule it
        shares with other traces cost (a small trace beside a big one pays for the big one's)."""
        row_count = self.span_row_count(trace_id) if row_count is None else row_count
        if not row_count:
            return 0
        if row_count <= _DISTINCT_OVER_ROWS:
            statement = f"SELECT uniqExact(span_id) FROM {SPAN_ROWS.name} WHERE trace_id = {sql_string(trace_id)}"
        else:
            statement = f"SELECT uniqExactMerge(span_count) FROM trace_index WHERE trace_id = {sql_string(trace_id)}"
        return int(self.first_column(statement)[0])

    def trace_services(self, trace_id: str) -> list[str]:
        """The services that sent spans of `trace_id`. From span_rows, not the spans view: copies
        of a span carry its service, and FINAL would merge every row of a big trace to list a few names."""
        return self.first_column(f"SELECT DISTINCT service FROM {SPAN_ROWS.name} WHERE trace_id = {sql_string(trace_id)}")

    def span_row_count(self, trace_id: str) -> int:
        """How many rows span_rows holds for `trace_id` (a span written twice counts twice until
        the store merges them): what tells a windowed read that its trace changed. Far cheaper
        than the trace index's distinct count on a big trace (no set of span ids to merge)."""
        rows = self._store.execute(f"SELECT count() FROM span_rows WHERE trace_id = {sql_string(trace_id)}").rows
        return int(rows[0][0]) if rows else 0

    def span_depth_fill(self, trace_id: str, span_count: int) -> DepthFill | None:
        """The fill of `trace_id` at `span_count` rows that reads use: of the readable ones made
        from the trace's content now, those with their pyramid built first, then the smallest id
        (so that processes that filled it at once all read the same one). One made from as many
        distinct rows as `span_count` holds that content; one made over copies a retry wrote only
        while the trace's distinct rows are as many as then (schema 013 says why). A fill is
        readable once its spans are written (its first row in span_depth_fills), its pyramid once
        a second row says so (schema 014)."""
        rows = self._store.execute(
            f"SELECT fill, first_bucket_log2, last_bucket_log2, distinct_rows, min(pyramid_pending), min(filled_ns) "
            f"FROM {SPAN_DEPTH_FILLS.name} WHERE trace_id = {sql_string(trace_id)} AND span_count = {int(span_count)} "
            "GROUP BY fill, first_bucket_log2, last_bucket_log2, distinct_rows").rows
        current = [row for row in rows if row[3] == span_count]
        if rows and not current:
            distinct_now = self.distinct_rows(trace_id)
            current = [row for row in rows if row[3] == distinct_now]
        if not current:
            return None
        fill, first_bucket_log2, last_bucket_log2, _, pending, filled_ns = (
            int(value) for value in min(current, key=lambda row: (row[4], row[0])))
        return DepthFill(fill, int(span_count), first_bucket_log2, last_bucket_log2,
                         self._duration_classes_of(trace_id, fill), not pending, filled_ns)

    def _duration_classes_of(self, trace_id: str, fill: int) -> tuple[int, ...]:
        classes = self._duration_classes.get(fill)
        if classes is None:
            classes = tuple(sorted(int(row[0]) for row in self._store.execute(
                f"SELECT DISTINCT duration_bits FROM {SPAN_DEPTHS.name} WHERE {_fill_condition(trace_id, fill)}").rows))
            if len(self._duration_classes) >= _CACHED_FILLS:
                self._duration_classes.clear()
            self._duration_classes[fill] = classes
        return classes

    def trace_fills(self, trace_id: str) -> list[FillRow]:
        """Every readable fill of `trace_id` (its spans written), of any row count, by id: a
        trace's few, from span_depth_fills alone."""
        rows = self._store.execute(
            f"SELECT fill, span_count, first_bucket_log2, last_bucket_log2, distinct_rows, min(pyramid_pending), "
            f"min(filled_ns), maxIf(filled_ns, pyramid_pending = 0) FROM {SPAN_DEPTH_FILLS.name} "
            f"WHERE trace_id = {sql_string(trace_id)} "
            "GROUP BY fill, span_count, first_bucket_log2, last_bucket_log2, distinct_rows ORDER BY fill").rows
        return [FillRow(int(fill), int(count), int(first), int(last), int(distinct), not pending, int(filled), int(built))
                for fill, count, first, last, distinct, pending, filled, built in rows]

    def readable_fill(self, trace_id: str, row: FillRow) -> DepthFill:
        """The fill `row` (trace_fills) as reads use it, with the duration classes of its spans."""
        return DepthFill(row.fill, row.span_count, row.first_bucket_log2, row.last_bucket_log2,
                         self._duration_classes_of(trace_id, row.fill), row.pyramid_built, row.filled_ns)

    def distinct_rows(self, trace_id: str) -> int:
        """How many distinct rows (span id and content) span_rows holds for `trace_id`: its rows
        less the copies a retry wrote that the store has not merged yet."""
        return int(self._store.execute(f"SELECT uniqExact(span_id, content_hash) FROM {SPAN_ROWS.name} "
                                       f"WHERE trace_id = {sql_string(trace_id)}").rows[0][0])

    def unfilled_traces(self, min_rows: int, pyramid_wait_ns: int) -> dict[str, int]:
        """Trace id -> row count in span_rows (span_row_count) of the traces with at least
        `min_rows` rows and no fill for that count that reads use (span_depth_fill), or only one
        whose pyramid is still missing `pyramid_wait_ns` after its spans were written (the process
        building it ended first): the ones a windowed read would fill, or that read slower than
        they should. One pass over span_rows' trace ids (about 20 ms a million rows embedded);
        the few traces with a fill of that count that may not be current (made over copies a
        retry wrote, since merged away; or without its pyramid) are then asked one by one."""
        fills = SPAN_DEPTH_FILLS.name
        rows = self._store.execute(
            f"SELECT trace_id, rows FROM (SELECT trace_id, count() AS rows FROM span_rows GROUP BY trace_id "
            f"HAVING rows >= {int(min_rows)}) WHERE (trace_id, rows) NOT IN "
            f"(SELECT trace_id, span_count FROM {fills} WHERE distinct_rows = span_count AND pyramid_pending = 0)").rows
        unfilled = {str(trace_id): int(count) for trace_id, count in rows}
        if not unfilled:
            return unfilled
        doubtful = self._store.execute(
            f"SELECT DISTINCT trace_id, span_count FROM {fills} "
            f"WHERE trace_id IN ({', '.join(map(sql_string, sorted(unfilled)))})").rows
        now_ns = time.time_ns()
        for trace_id, span_count in doubtful:
            if unfilled.get(str(trace_id)) != int(span_count):
                continue
            fill = self.span_depth_fill(str(trace_id), int(span_count))
            if fill is not None and (fill.pyramid_built or now_ns - fill.filled_ns < pyramid_wait_ns):
                del unfilled[str(trace_id)]
        return unfilled

    @property
    def reads_unwritten(self) -> bool:
        """Whether reads of the window cache can be answered from a fill's rows before they are
        written (the store reads Arrow rows of this process: depths_source)."""
        return self._store.reads_arrow_rows

    def window_spans(self, trace_id: str) -> pa.Table:
        """What a fill of span_depths takes of every row of `trace_id`, copies included
        (copy_rows), in no order (sorting a big trace's rows costs the store more than the fill
        spends putting in order the few it needs: depths.tree_spans): span_id, parent_span_id,
        service, name, level (stored_level's, by the store), attr_keys and attr_values (the
        viewer's attributes the span has, else its resource's: WINDOW_ATTRIBUTES, in that order),
        start_ns, end_ns and content_hash. As Arrow: a fill works on whole columns, never one
        Python object per value."""
        found = ", ".join(_attribute_sql(key) for key in WINDOW_ATTRIBUTES)
        return self._store.execute_arrow(
            f"SELECT span_id, parent_span_id, service, name, level, "
            f"arrayFilter((key, value) -> value != '', [{', '.join(map(sql_string, WINDOW_ATTRIBUTES))}], found) AS attr_keys, "
            "arrayFilter(value -> value != '', found) AS attr_values, start_ns, end_ns, content_hash FROM ("
            f"SELECT span_id, parent_span_id, service, name, {_stored_level_sql('level')} AS level, [{found}] AS found, "
            f"start_ns, end_ns, content_hash FROM {SPAN_ROWS.name} WHERE trace_id = {sql_string(trace_id)})")

    def store_span_depths(self, trace_id: str, fill: DepthFill, rows: pa.Table, distinct_rows: int) -> None:
        """Writes the spans of one fill of a trace, made from `distinct_rows` distinct rows (SPAN_DEPTHS'
        columns, store.arrow_rows), then its row in span_depth_fills, which makes it readable
        without its pyramid (store_pyramid builds that)."""
        self._store.insert_arrow(SPAN_DEPTHS.name, rows)
        self._store_fill_row(trace_id, fill, distinct_rows, pyramid_built=False)

    def store_pyramid(self, trace_id: str, fill: DepthFill, distinct_rows: int,
                      give_way: Callable[[], None] = lambda: None) -> None:
        """Builds the pyramid of a fill store_span_depths wrote (by the store, from its spans), then
        a second row of the fill in span_depth_fills, which makes reads use it (the fills it
        replaces go with retire_fills). It calls `give_way` between its statements (seconds in
        all for a big trace): the embedded store runs one at a time, and reads come first."""
        for bucket_log2 in range(fill.first_bucket_log2, fill.last_bucket_log2 + 1):
            for sql in (_bucket_sql(trace_id, fill, bucket_log2), _tile_sql(trace_id, fill, bucket_log2)):
                give_way()
                self._store.execute(sql)
        # A fill deleted meanwhile (replaced, or its tables emptied) must not be made readable again.
        if self._store.execute(f"SELECT count() FROM {SPAN_DEPTH_FILLS.name} WHERE trace_id = {sql_string(trace_id)} "
                               f"AND fill = {int(fill.fill)}").rows[0][0]:
            self._store_fill_row(trace_id, fill, distinct_rows, pyramid_built=True)

    def retire_fills(self, trace_id: str, fill: DepthFill, distinct_rows: int, keep: Collection[int] = ()) -> None:
        """Deletes what `fill` (made from `distinct_rows` distinct rows, its pyramid built)
        replaces: the trace's earlier fills (smaller ids) of another row count, complete or not,
        and those of the same count made from other rows, except the fills `keep` (being read).
        The delete runs in the background, so a read of one of them may see it in part: it is
        called well after reads stopped choosing them (query/windows.py RETIRE_AFTER_S); a fill
        of the same rows made at the same time stays, unread, until the next."""
        trace = f"trace_id = {sql_string(trace_id)}"
        outdated = [int(row[0]) for row in self._store.execute(
            f"SELECT fill FROM {SPAN_DEPTH_FILLS.name} WHERE {trace} AND span_count = {int(fill.span_count)} "
            f"AND distinct_rows != {int(distinct_rows)}").rows]
        other_rows = f" OR fill IN ({', '.join(map(str, outdated))})" if outdated else ""
        kept = f" AND fill NOT IN ({', '.join(map(str, sorted(map(int, keep))))})" if keep else ""
        earlier = f"{trace} AND fill < {int(fill.fill)} AND (span_count != {int(fill.span_count)}{other_rows}){kept}"
        # A delete is a mutation, which rewrites parts of the table: only when there is something
        # to delete, never on a trace's first fill.
        if self._store.execute(f"SELECT count() FROM {SPAN_DEPTHS.name} WHERE {earlier}").rows[0][0]:
            for table in (SPAN_DEPTH_FILLS, SPAN_DEPTH_TILES, SPAN_DEPTH_BUCKETS, SPAN_DEPTHS):
                self._store.execute(f"ALTER TABLE {table.name} DELETE WHERE {earlier}")

    def _store_fill_row(self, trace_id: str, fill: DepthFill, distinct_rows: int, pyramid_built: bool) -> None:
        self._store.insert(SPAN_DEPTH_FILLS.name, {
            "trace_id": [trace_id], "span_count": [fill.span_count], "fill": [fill.fill],
            "first_bucket_log2": [fill.first_bucket_log2], "last_bucket_log2": [fill.last_bucket_log2],
            "filled_ns": [time.time_ns()], "distinct_rows": [distinct_rows], "pyramid_pending": [int(not pyramid_built)]})

    def window_entries(self, trace_id: str, fill: DepthFill, window: tuple[int, int], resolution_ns: int,
                       unwritten: pa.Table | None = None) -> Columns:
        """The level-of-detail entries of a window, merged by the store (_window_entries_sql), by
        track, depth, then start: track, depth, start_ns, end_ns, span_total, total_ns,
        dominant_name, dominant_level, span_id ('' for merged entries). `unwritten`: the fill's
        rows, when they are not written yet (depths_source)."""
        return self.columns_of(_window_entries_sql(trace_id, fill, window, resolution_ns, depths_source(unwritten)), unwritten)

    def span_details(self, trace_id: str, fill: DepthFill, spans: Sequence[tuple[str, int, int]],
                     unwritten: pa.Table | None = None) -> Columns:
        """span_id, parent_span_id, attr_keys, attr_values (the viewer's attributes a span has) of
        `spans`, each (span id, start_ns, end_ns), from `fill`'s span_depths (or `unwritten`, its
        rows not written yet): found by start, in its key, not by id (which would read every row
        of the fill); other spans starting at the same time come too."""
        if not spans:
            return {name: [] for name in ("span_id", "parent_span_id", "attr_keys", "attr_values")}
        starts = sorted({int(start) for _, start, _ in spans})
        starts_in = f"start_ns IN ({', '.join(map(str, starts))})"
        condition = f"{_fill_condition(trace_id, fill.fill)} AND start_ns BETWEEN {starts[0]} AND {starts[-1]}"
        # PREWHERE (a table's only): the other columns are read only where a start matches.
        where = f"PREWHERE {starts_in} WHERE {condition}" if unwritten is None else f"WHERE {starts_in} AND {condition}"
        return self.columns_of(
            f"SELECT span_id, parent_span_id, attr_keys, attr_values FROM {depths_source(unwritten)} {where}", unwritten)

    def trace_columns(self, trace_id: str, names: Sequence[str] = _SPAN_COLUMN_NAMES,
                      levels: frozenset[str] | None = None, window: tuple[int, int] | None = None,
                      span_ids: Collection[str] | None = None, max_rows: int | None = None) -> Columns:
        """The `names` columns of the spans of `trace_id`, by start time then span id, each span
        once (as the `spans` view has it); the level filter (levels as stored_level counts them),
        the time window (spans overlapping it) and a list of span ids are applied by the store.

        Read from span_rows without FINAL: its merge of the copies costs more than the rows it
        saves (the `spans` view doubled a small trace's read), and the copies a retry wrote, not
        yet merged, are identical rows under one key (span id, content hash), which the order
        puts next to each other: _without_copies drops them here. Nor are the trace's partitions
        bounded by its time range: the trace id, first in span_rows' key, finds its granules in
        every part for about what asking the trace index for that range costs.

        With `max_rows`, RowsOverLimit when the store would read more rows than that: it refuses
        before reading, on the rows of the granules the key selected (a few thousand more than
        the trace's own at most), so a caller needs no count first to bound what it reads."""
        conditions = [f"trace_id = {sql_string(trace_id)}"]
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
        selected += [name for name in _COPY_KEY if name not in selected]
        settings = None if max_rows is None else {"max_rows_to_read": max_rows, "read_overflow_mode": "throw"}
        try:
            read = self._store.execute_columns(
                f"SELECT {', '.join(map(_select, selected))} FROM {SPAN_ROWS.name} WHERE {' AND '.join(conditions)} "
                f"{_TRACE_ORDER}", settings)
        except StoreError as exc:
            if max_rows is not None and exc.code == _TOO_MANY_ROWS:
                raise RowsOverLimit(f"trace {trace_id}: more than {max_rows} rows to read") from exc
            raise
        columns = _without_copies(read)
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
        columns = self.trace_columns(trace_id)
        return [span_from_row({name: columns[name][row] for name in _SPAN_COLUMN_NAMES})
                for row in range(len(columns["span_id"]))]

    def metric_samples(self, services: Iterable[str], start_ns: int, end_ns: int) -> list[MetricSample]:
        """The metric samples of `services` around [start_ns, end_ns], oldest first."""
        return [metric_sample(row) for row in self._store.execute(metric_samples_sql(services, start_ns, end_ns)).rows]

    def first_column(self, statement: str) -> list[Any]:
        """The first column of a statement this package built (jaeger.py's lookups), never a user's SQL."""
        return [row[0] for row in self._store.execute(statement).rows]

    def columns_of(self, statement: str, unwritten: pa.Table | None = None) -> Columns:
        """Every column of a statement this package built (search.py's matches), by name, never a
        user's SQL; one that reads ARROW_ROWS reads `unwritten` (depths_source)."""
        if unwritten is None:
            return self._store.execute_columns(statement)
        return self._store.execute_columns_over(statement, unwritten)

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
        statement = check_query(query, hidden_tables={} if internal_tables else HIDDEN_FROM_READERS)
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
