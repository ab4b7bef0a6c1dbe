"""One evaluated configuration and scenario: the row of the `evaluations` table.

The results travel as the attributes of an `mlscope.evaluation` span (`mlscope.evaluation.<field>`)
through the collector, and store/schema/004_evaluations.sql turns each such span into a row. So
the field names here are the table's column names; a test holds the two together. A field that
was not measured (None) is left off the span and reads as NaN (floats) or 0 in the table.
"""

from __future__ import annotations

from mlscope.conventions import EVALUATION_PREFIX, EVALUATION_SPAN
from dataclasses import asdict, dataclass, fields

SPAN_NAME = EVALUATION_SPAN
PREFIX = EVALUATION_PREFIX


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str
    model: str
    model_version: str
    task: str
    framework: str
    framework_version: str
    execution_provider: str
    system: str  # the HW/SW stack's fingerprint
    system_name: str
    system_description: str
    batch_size: int
    scenario: str
    level: str
    queries: int
    samples: int
    latency_mean_ns: float
    latency_p50_ns: int
    latency_p90_ns: int
    latency_p99_ns: int
    throughput: float  # samples per second
    accuracy_top1: float | None = None
    accuracy_top5: float | None = None
    accuracy_samples: int = 0
    server_qps: float | None = None
    server_bound_ns: int = 0
    server_bound_met: bool | None = None
    divergence_reference: str = ""
    divergence_samples: int = 0
    divergence_max_abs_diff: float | None = None
    divergence_top1_agreement: float | None = None
    predictor: str = ""  # the `mlscope predictor` that ran it; "" for a local `mlscope evaluate`
    job_id: str = ""  # the queued job it answers; "" when local
    spans_dropped: int = 0  # its measurement's spans the agent did not deliver: its trace is incomplete

    def span_attributes(self) -> dict[str, str | int | float | bool]:
        return {PREFIX + name: value for name, value in asdict(self).items() if value is not None}


FIELDS: tuple[str, ...] = tuple(field.name for field in fields(EvaluationResult))
