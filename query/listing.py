"""Trace listing: query parameters -> a filter -> SQL over `trace_index` -> trace summaries.

Pure: no I/O. `trace_index` holds partial aggregation states per (trace_id, day); they are merged
at read time (GROUP BY trace_id), so a trace that spans midnight, or whose spans arrived in many
batches, is listed once with its whole time range and exact span count. Literals are quoted by
`sql_string` and numbers pass through int(), so no parameter can change the statement.

Search: span filters (`attr=key=value`, repeatable; `level`, `status`, `name`) select the traces
holding one span that matches all of them, as a `trace_id IN (...)` subquery *before* the merge,
so only candidate traces' states are merged; the time bounds (and a cursor) also bound the
index's days before the merge, which prunes whole partitions. The order is stable (start time
newest first, then trace id), and a page that is full returns `next_cursor`: the position after
its last trace, opaque (base64 of "start_ns:trace_id"), to pass back as `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlscope.conventions import DEFAULT_LEVEL, LEVELS
from mlscope.store import sql_string

from .errors import BadRequest
from .params import ParseParam, int_between, natural, one_of, parse_params, text

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

TEXT_FILTERS = ("service", "model", "framework")
NUMBER_FILTERS = ("since_ns", "until_ns", "min_duration_ns")
STATUSES = ("unset", "ok", "error")
MAX_ATTRIBUTE_FILTERS = 16
_CURSOR = re.compile(r"(\d{1,20}):([0-9a-f]{32})")


@dataclass(frozen=True)
class TraceFilter:
    """Which traces to list: text filters match exactly; a trace is in [since_ns, until_ns)
    by its start time; newest first, at most `limit`."""

    service: str | None = None
    model: str | None = None
    framework: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    min_duration_ns: int | None = None
    limit: int = DEFAULT_LIMIT
    attributes: tuple[tuple[str, str], ...] = ()  # a span with every key = value
    level: str | None = None
    status: str | None = None
    name: str | None = None
    after: tuple[int, str] | None = None  # the cursor: (start_ns, trace_id) of the last trace seen


TRACE_PARAMS: dict[str, ParseParam] = {
    **dict.fromkeys(TEXT_FILTERS, text),
    **dict.fromkeys(NUMBER_FILTERS, natural),
    "limit": int_between(1, MAX_LIMIT),
    "level": one_of(LEVELS),
    "status": one_of(STATUSES),
    "name": text,
}


def encode_cursor(start_ns: int, trace_id: str) -> str:
    return base64.urlsafe_b64encode(f"{int(start_ns)}:{trace_id}".encode()).decode()


def _cursor(name: str, value: str) -> tuple[int, str]:
    try:
        decoded = base64.urlsafe_b64decode(value.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        decoded = ""
    found = _CURSOR.fullmatch(decoded)
    if not found:
        raise BadRequest(f"{name} must be a next_cursor this API returned")
    return int(found.group(1)), found.group(2)


def _attribute(text_value: str) -> tuple[str, str]:
    key, equals, value = text_value.partition("=")
    if not key or not equals:
        raise BadRequest(f"attr must be key=value, not {text_value[:64]!r}")
    return key, value


def parse_trace_filter(params: Mapping[str, str], attributes: Sequence[str] = ()) -> TraceFilter:
    """Query parameters -> TraceFilter (query/params.py: empty counts as absent, unknown is
    ignored, BadRequest names a bad one); `attributes` are the repeated `attr` parameters."""
    if len(attributes) > MAX_ATTRIBUTE_FILTERS:
        raise BadRequest(f"at most {MAX_ATTRIBUTE_FILTERS} attr filters")
    cursor = parse_params(params, {"cursor": _cursor}, repeatable=("attr",))
    return TraceFilter(**parse_params(params, TRACE_PARAMS, repeatable=("attr",)), attributes=tuple(_attribute(a) for a in attributes),
                       after=cursor.get("cursor"))


# The inner query merges the states; the outer one names and filters the merged values (its
# aliases differ from trace_index's columns, which ClickHouse would otherwise substitute).
_MERGED = """SELECT trace_id, root AS root_name, if(root_service_ != '', root_service_, any_service_) AS service,
       first_ns AS start_ns, last_ns AS end_ns, last_ns - first_ns AS duration_ns, spans AS span_count,
       model_ AS model, framework_ AS framework
FROM (
    SELECT trace_id,
           minMerge(start_ns) AS first_ns,
           maxMerge(end_ns) AS last_ns,
           uniqExactMerge(span_count) AS spans,
           anyIfMerge(root_name) AS root,
           anyIfMerge(root_service) AS root_service_,
           anyMerge(any_service) AS any_service_,
           anyIfMerge(model) AS model_,
           anyIfMerge(framework) AS framework_
    FROM trace_index{candidates}
    GROUP BY trace_id
)"""

SUMMARY_COLUMNS = (
    "trace_id", "root_name", "service", "start_ns", "end_ns", "duration_ns", "span_count", "model", "framework",
)


def _day(ns: int) -> str:
    """The `day` of a span starting at `ns`, computed as the schema computes it."""
    return f"toDate(toDateTime(intDiv({int(ns)}, 1000000000)))"


def _span_conditions(trace_filter: TraceFilter) -> list[str]:
    conditions = [f"has(attr_keys, {sql_string(key)}) AND attr_values[indexOf(attr_keys, {sql_string(key)})] = "
                  f"{sql_string(value)}" for key, value in trace_filter.attributes]
    if trace_filter.level == DEFAULT_LEVEL:  # a span with no known level counts as the default
        others = ", ".join(sql_string(level) for level in LEVELS if level != DEFAULT_LEVEL)
        conditions.append(f"level NOT IN ({others})")
    elif trace_filter.level is not None:
        conditions.append(f"level = {sql_string(trace_filter.level)}")
    if trace_filter.status is not None:
        conditions.append(f"status_code = {sql_string(trace_filter.status)}")
    if trace_filter.name is not None:
        conditions.append(f"name = {sql_string(trace_filter.name)}")
    return conditions


def _candidates(trace_filter: TraceFilter) -> str:
    """The WHERE of the merge: the traces that can match, so that only their states merge. A
    trace starting in [since, until) has its first day's row at or after since's day and at or
    before until's (or the cursor's) day."""
    conditions = []
    latest = min((bound for bound in (trace_filter.until_ns, trace_filter.after and trace_filter.after[0])
                  if bound is not None), default=None)
    if latest is not None:
        conditions.append(f"trace_id IN (SELECT trace_id FROM trace_index WHERE day <= {_day(latest)})")
    if trace_filter.since_ns is not None:
        conditions.append(f"trace_id IN (SELECT trace_id FROM trace_index WHERE day >= {_day(trace_filter.since_ns)})")
    span_conditions = _span_conditions(trace_filter)
    if span_conditions:
        conditions.append(f"trace_id IN (SELECT trace_id FROM spans WHERE {' AND '.join(span_conditions)})")
    return f"\n    WHERE {' AND '.join(conditions)}" if conditions else ""


def trace_list_sql(trace_filter: TraceFilter) -> str:
    """One row more than the limit: whether a next page exists (trace_page)."""
    conditions = [f"{name} = {sql_string(value)}" for name in TEXT_FILTERS
                  if (value := getattr(trace_filter, name)) is not None]
    if trace_filter.since_ns is not None:
        conditions.append(f"start_ns >= {int(trace_filter.since_ns)}")
    if trace_filter.until_ns is not None:
        conditions.append(f"start_ns < {int(trace_filter.until_ns)}")
    if trace_filter.min_duration_ns is not None:
        conditions.append(f"duration_ns >= {int(trace_filter.min_duration_ns)}")
    if trace_filter.after is not None:
        start_ns, trace_id = trace_filter.after
        conditions.append(f"(start_ns < {int(start_ns)} OR (start_ns = {int(start_ns)} AND trace_id > "
                          f"{sql_string(trace_id)}))")
    where = f"\nWHERE {' AND '.join(conditions)}" if conditions else ""
    merged = _MERGED.format(candidates=_candidates(trace_filter))
    return f"{merged}{where}\nORDER BY start_ns DESC, trace_id\nLIMIT {int(trace_filter.limit) + 1}"


def trace_page(summaries: list[dict[str, Any]], trace_filter: TraceFilter) -> tuple[list[dict[str, Any]], str | None]:
    """trace_list_sql's summaries -> (the page, the cursor of the next one or None)."""
    page = summaries[: trace_filter.limit]
    if len(summaries) <= trace_filter.limit:
        return page, None
    return page, encode_cursor(page[-1]["start_ns"], page[-1]["trace_id"])


def trace_summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of trace_list_sql's result -> the API's trace summary."""
    return dict(zip(SUMMARY_COLUMNS, row))
