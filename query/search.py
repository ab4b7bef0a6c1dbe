"""Search of one whole trace by text (GET /api/traces/{id}/search), for the viewer's windowed
mode, where the page holds one window of a big trace and cannot search the rest itself.

A span matches when its name, or its layer label (module path and class, as the viewer labels a
layer: `features.3 (Conv2d)`), contains the text, case-insensitively. Matches come from the
trace's window cache (span_depths, the fill every window read draws from; made now when there is
none, as by the first window read; while the trace grows, its latest fill, which the answer's
span_count tells), so their depth and track are those the windows draw them at:
by start time, then depth, then span id; at most `limit`, with the count of all.

The text reaches the store as the hex of its UTF-8 bytes (`unhex('...')`), so no character of it
is ever SQL. Blocking (the store is); the HTTP layer runs it in a worker thread.
"""

from __future__ import annotations

from typing import Any

from mlscope.conventions import LAYER_PATH, LAYER_TYPE
from mlscope.store import Columns, sql_string

from .errors import BadRequest
from .params import int_between
from .reader import TraceReader, depths_source
from .windows import fill_for_read

MAX_TEXT_CHARS = 200
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_MATCH_COLUMNS = ("span_id", "name", "level", "service", "depth", "start_ns", "end_ns")


def search_text(name: str, value: str) -> str:
    """The text searched for: 1 to MAX_TEXT_CHARS characters, matched as given (no pattern)."""
    if len(value) > MAX_TEXT_CHARS:
        raise BadRequest(f"{name} must be at most {MAX_TEXT_CHARS} characters, not {len(value)}")
    return value


SEARCH_PARAMS = {"q": search_text, "limit": int_between(1, MAX_LIMIT)}


def _attribute_sql(key: str) -> str:
    # Index 0 (the key absent) reads as ''.
    return f"attr_values[indexOf(attr_keys, {sql_string(key)})]"


def _condition_sql(trace_id: str, fill: int, text: str) -> str:
    needle = f"unhex('{text.encode('utf-8').hex()}')"
    path, kind = _attribute_sql(LAYER_PATH), _attribute_sql(LAYER_TYPE)
    label = f"if({path} = '', '', concat({path}, ' (', {kind}, ')'))"
    return (f"trace_id = {sql_string(trace_id)} AND fill = {int(fill)} AND "
            f"(positionCaseInsensitiveUTF8(name, {needle}) > 0 OR positionCaseInsensitiveUTF8({label}, {needle}) > 0)")


def matches_sql(trace_id: str, fill: int, text: str, limit: int, source: str) -> str:
    """The first `limit` matching spans of fill `fill` of `trace_id`, by start, depth, span id,
    from `source` (reader.depths_source)."""
    return (f"SELECT {', '.join(_MATCH_COLUMNS)} FROM {source} WHERE {_condition_sql(trace_id, fill, text)} "
            f"ORDER BY start_ns, depth, span_id LIMIT {int(limit)}")


def count_sql(trace_id: str, fill: int, text: str, source: str) -> str:
    return f"SELECT count() AS total FROM {source} WHERE {_condition_sql(trace_id, fill, text)}"


def search_json(trace_id: str, text: str, total: int, found: Columns, span_count: int, spans_now: int) -> dict[str, Any]:
    """The answer: the count of all matches and the first ones, each with its track (service),
    among the trace's `span_count` rows the fill searched holds; `spans_now`: the trace's rows
    now (more while a growing trace is filled again)."""
    return {
        "trace_id": trace_id, "q": text, "total": total, "span_count": span_count, "spans_now": spans_now,
        "matches": [{"span_id": span_id, "name": name, "level": level, "track": track, "depth": int(depth),
                     "start_ns": int(start), "end_ns": int(end)}
                    for span_id, name, level, track, depth, start, end in zip(*(found[c] for c in _MATCH_COLUMNS))],
    }


def search_trace(reader: TraceReader, trace_id: str, text: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any] | None:
    """The spans of `trace_id` matching `text` (search_json), from the fill a window read would
    draw (windows.fill_for_read: while the trace grows, its latest); None for an unknown trace."""
    with fill_for_read(reader, trace_id) as read:
        if read is None:
            return None
        source, fill = depths_source(read.unwritten), read.fill.fill
        total = int(reader.columns_of(count_sql(trace_id, fill, text, source), read.unwritten)["total"][0])
        found = (reader.columns_of(matches_sql(trace_id, fill, text, limit, source), read.unwritten) if total
                 else {c: [] for c in _MATCH_COLUMNS})
    return search_json(trace_id, text, total, found, read.fill.span_count, read.spans_now)
