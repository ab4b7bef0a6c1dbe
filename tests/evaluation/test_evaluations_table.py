"""The `evaluations` table on both store backends: spans named `mlscope.evaluation` become rows
through the materialized view, a retried span is never shown twice, other spans never show."""

from __future__ import annotations

import math

from mlscope.evaluation.results import FIELDS, SPAN_NAME, EvaluationResult
from mlscope.store import Store, empty_columns, open_store
from mlscope.store.base import schema_files

RESULT = EvaluationResult(
    run_id="r1", model="resnet18", model_version="1.0.0", task="image-classification", framework="onnxruntime",
    framework_version="1.32.0", execution_provider="CPUExecutionProvider", system="0123456789abcdef",
    system_name="host", system_description="2 CPUs", batch_size=8, scenario="server", level="model", queries=20,
    samples=160, latency_mean_ns=1.5e7, latency_p50_ns=14_000_000, latency_p90_ns=18_000_000,
    latency_p99_ns=21_000_000, throughput=512.25, accuracy_top1=0.96, accuracy_top5=1.0, accuracy_samples=450,
    server_qps=1e-05, server_bound_ns=60_000_000, server_bound_met=True, divergence_reference="pytorch",
    divergence_samples=32, divergence_max_abs_diff=3.5e-06, divergence_top1_agreement=1.0,
)


def _span_row(columns: dict, span_id: str, name: str, attributes: dict) -> None:
    """One span as the collector writes it: attribute values as strings (bools as true/false)."""
    values = {"trace_id": "a" * 32, "span_id": span_id, "parent_span_id": "", "name": name, "kind": "INTERNAL",
              "service": "mlscope-evaluate", "level": "application", "start_ns": 1_764_000_000_000_000_000,
              "end_ns": 1_764_000_001_000_000_000, "duration_ns": 1_000_000_000, "status_code": "UNSET",
              "status_message": "", "scope_name": "mlscope.agents", "scope_version": "",
              "attr_keys": list(attributes),
              "attr_values": [("true" if v else "false") if isinstance(v, bool) else str(v) if not isinstance(v, float) else repr(v)
                              for v in attributes.values()],
              "resource_keys": [], "resource_values": [], "event_times_ns": [], "event_names": [],
              "event_attrs_json": [], "links_json": "[]"}
    for key, value in values.items():
        columns[key].append(value)


def _not_measured(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _select(store: Store) -> list[dict]:
    result = store.execute("SELECT * FROM evaluations ORDER BY span_id")
    return [dict(zip((column.name for column in result.columns), row)) for row in result.rows]


def test_evaluation_spans_become_rows_once(store: Store) -> None:
    columns = empty_columns("span_rows")
    _span_row(columns, "1" * 16, SPAN_NAME, RESULT.span_attributes())
    unmeasured = EvaluationResult(**{**RESULT.__dict__, "accuracy_top1": None, "accuracy_top5": None,
                                     "server_qps": None, "server_bound_met": None, "scenario": "offline"})
    _span_row(columns, "2" * 16, SPAN_NAME, unmeasured.span_attributes())
    _span_row(columns, "3" * 16, "predict", RESULT.span_attributes())  # not an evaluation
    store.insert("span_rows", columns)
    store.insert("span_rows", columns)  # a client's retry of the same request

    rows = _select(store)
    assert [row["span_id"] for row in rows] == ["1" * 16, "2" * 16]
    first, second = rows
    assert first["trace_id"] == "a" * 32 and first["time_ns"] == 1_764_000_000_000_000_000
    for name in FIELDS:
        expected = getattr(RESULT, name)
        assert first[name] == (int(expected) if isinstance(expected, bool) else expected), name
    # NaN: the embedded engine's JSON output says null, clickhouse-driver says nan.
    assert all(_not_measured(second[name]) for name in ("accuracy_top1", "accuracy_top5", "server_qps"))
    assert (second["server_bound_met"], second["scenario"]) == (0, "offline")


def test_table_columns_are_the_result_fields(store: Store) -> None:
    columns = [column.name for column in store.execute("SELECT * FROM evaluations LIMIT 0").columns]
    assert columns == ["trace_id", "span_id", "time_ns", *FIELDS, "day", "content_hash", "conflict"]


def _store_as_of_version_4(store_url: str) -> Store:
    """A store as the schema left it before 005: 001-004 applied, with 004's original
    materialized view and view (no predictor/job_id columns)."""
    store = open_store(store_url, migrate=False)
    store.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                  "(version UInt64, name String, applied_ns UInt64) ENGINE = MergeTree ORDER BY version")
    files = {schema_file.version: schema_file for schema_file in schema_files()}
    for version in (1, 2, 3, 4):
        for statement in files[version].statements:
            store.execute(statement)
        store.insert("schema_migrations", {"version": [version], "name": [files[version].name], "applied_ns": [0]})
    new_view = next(s for s in files[5].statements if s.startswith("CREATE MATERIALIZED VIEW"))
    old_view = "\n".join(line for line in new_view.splitlines() if "predictor" not in line and "job_id" not in line)
    store.execute(old_view)
    store.execute("CREATE VIEW IF NOT EXISTS evaluations AS SELECT * FROM evaluation_rows FINAL")
    return store


def test_an_older_store_gains_the_origin_columns_and_keeps_its_rows(store_url: str) -> None:
    store = _store_as_of_version_4(store_url)
    try:
        before = empty_columns("span_rows")
        _span_row(before, "1" * 16, SPAN_NAME, RESULT.span_attributes())
        store.insert("span_rows", before)
        assert store.migrate() == [schema_file.name for schema_file in schema_files() if schema_file.version >= 5]
        after = empty_columns("span_rows")
        remote = EvaluationResult(**{**RESULT.__dict__, "predictor": "gpu-box", "job_id": "j" * 32})
        _span_row(after, "2" * 16, SPAN_NAME, remote.span_attributes())
        store.insert("span_rows", after)

        rows = _select(store)
        assert [(row["span_id"], row["predictor"], row["job_id"]) for row in rows] == [
            ("1" * 16, "", ""), ("2" * 16, "gpu-box", "j" * 32)]
        # Run again as after an interruption: the ADD COLUMNs are skipped, the views recreated.
        store.apply_schema_file(schema_files()[4])
        assert len(_select(store)) == 2
    finally:
        store.close()
