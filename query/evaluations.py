"""Evaluation listing: query parameters -> a filter -> SQL over the `evaluations` view.

Pure: no I/O. Text filters match exactly and are quoted by `sql_string`; numbers pass through
int(), so no parameter can change the statement. Rows come back with every column of the table
(CONTRACT.md: one row per evaluated configuration and scenario).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlscope.store import sql_string

from .errors import BadRequest

TEXT_FILTERS = ("model", "framework", "scenario", "level", "system", "predictor", "run_id", "job_id", "span_id")
NUMBER_FILTERS = ("batch_size",)
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


def parse_evaluation_filter(params: Mapping[str, str]) -> EvaluationFilter:
    """Empty parameters count as absent, unknown ones are ignored; BadRequest names a bad one."""
    values: dict[str, str | int] = {name: params[name] for name in TEXT_FILTERS if params.get(name)}
    for name in NUMBER_FILTERS:
        if params.get(name):
            try:
                values[name] = int(params[name])
            except ValueError:
                raise BadRequest(f"{name} must be an integer, not {params[name]!r}") from None
            if values[name] < 0:
                raise BadRequest(f"{name} must not be negative")
    return EvaluationFilter(**values)


def evaluations_sql(evaluation_filter: EvaluationFilter) -> str:
    """Oldest first within model, framework, batch size and scenario: the order a report reads."""
    conditions = [f"{name} = {sql_string(value)}" for name in TEXT_FILTERS
                  if (value := getattr(evaluation_filter, name)) is not None]
    conditions += [f"{name} = {int(value)}" for name in NUMBER_FILTERS
                   if (value := getattr(evaluation_filter, name)) is not None]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT * FROM evaluations{where} "
            f"ORDER BY model, framework, batch_size, scenario, time_ns, span_id LIMIT {MAX_ROWS}")
