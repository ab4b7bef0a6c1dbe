"""Trace listing: query parameters -> a filter -> SQL over `trace_index` -> trace summaries.

Pure: no I/O. `trace_index` holds partial aggregation states per (trace_id, day); they are merged
at read time (GROUP BY trace_id), so a trace that spans midnight, or whose spans arrived in many
batches, is listed once with its whole time range and exact span count. Literals are quoted by
`sql_string` and numbers pass through int(), so no parameter can change the statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlscope.store import sql_string

from .params import ParseParam, int_between, natural, parse_params, text

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

TEXT_FILTERS = ("service", "model", "framework")
NUMBER_FILTERS = ("since_ns", "until_ns", "min_duration_ns")


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


TRACE_PARAMS: dict[str, ParseParam] = {
    **dict.fromkeys(TEXT_FILTERS, text),
    **dict.fromkeys(NUMBER_FILTERS, natural),
    "limit": int_between(1, MAX_LIMIT),
}


def parse_trace_filter(params: Mapping[str, str]) -> TraceFilter:
    """Query parameters -> TraceFilter (query/params.py: empty counts as absent, unknown is
    ignored, BadRequest names a bad one)."""
    return TraceFilter(**parse_params(params, TRACE_PARAMS))


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
    FROM trace_index
    GROUP BY trace_id
)"""

SUMMARY_COLUMNS = (
    "trace_id", "root_name", "service", "start_ns", "end_ns", "duration_ns", "span_count", "model", "framework",
)


def trace_list_sql(trace_filter: TraceFilter) -> str:
    conditions = [f"{name} = {sql_string(value)}" for name in TEXT_FILTERS
                  if (value := getattr(trace_filter, name)) is not None]
    if trace_filter.since_ns is not None:
        conditions.append(f"start_ns >= {int(trace_filter.since_ns)}")
    if trace_filter.until_ns is not None:
        conditions.append(f"start_ns < {int(trace_filter.until_ns)}")
    if trace_filter.min_duration_ns is not None:
        conditions.append(f"duration_ns >= {int(trace_filter.min_duration_ns)}")
    where = f"\nWHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{_MERGED}{where}\nORDER BY start_ns DESC, trace_id\nLIMIT {int(trace_filter.limit)}"


def trace_summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of trace_list_sql's result -> the API's trace summary."""
    return dict(zip(SUMMARY_COLUMNS, row))
