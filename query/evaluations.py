"""Evaluation listing: query parameters -> a filter -> SQL over the `evaluations` view.

Pure: no I/O. Text filters match exactly and are quoted by `sql_string`; numbers pass through
int(), so no parameter can change the statement. Rows come back with every column of the table
(CONTRACT.md: one row per evaluated configuration and scenario; an evaluation sent again with
other content under the same ids is a row per content, each with `conflict` 1: schema/012).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlscope.store import sql_string

from .params import ParseParam, natural, parse_params, text, zero_or_one

TEXT_FILTERS = ("model", "framework", "scenario", "level", "system", "predictor", "run_id", "job_id", "span_id")
NUMBER_FILTERS = ("batch_size", "conflict")
MAX_ROWS = 10_000


@dataclass(frozen=True)
class EvaluationFilter:
    model: str | None = None
    framework: str | None = None
    scenario: str | None = None
    level: str | None = None
    system: str | None = None
    predictor: str | None = None
    run_id: str | None = None
    job_id: str | None = None
    span_id: str | None = None
    batch_size: int | None = None
    conflict: int | None = None  # 1: only the copies of evaluations stored with more than one content


EVALUATION_PARAMS: dict[str, ParseParam] = {**dict.fromkeys(TEXT_FILTERS, text), "batch_size": natural,
                                            "conflict": zero_or_one}


def parse_evaluation_filter(params: Mapping[str, str]) -> EvaluationFilter:
    """Query parameters -> EvaluationFilter, by query/params.py's rule."""
    return EvaluationFilter(**parse_params(params, EVALUATION_PARAMS))


def evaluations_sql(evaluation_filter: EvaluationFilter) -> str:
    """Oldest first within model, framework, batch size and scenario: the order a report reads
    (ties: by span id, then content hash, so the copies of a conflicting evaluation keep an order)."""
    conditions = [f"{name} = {sql_string(value)}" for name in TEXT_FILTERS
                  if (value := getattr(evaluation_filter, name)) is not None]
    conditions += [f"{name} = {int(value)}" for name in NUMBER_FILTERS
                   if (value := getattr(evaluation_filter, name)) is not None]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT * FROM evaluations{where} "
            f"ORDER BY model, framework, batch_size, scenario, time_ns, span_id, content_hash LIMIT {MAX_ROWS}")
