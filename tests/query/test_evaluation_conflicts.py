"""An evaluation sent again with other content under the same ids (schema/012), as its readers
see it, on both backends: GET /api/evaluations lists every copy with `conflict` 1 (`?conflict=1`
only those), and the report built from those rows marks them, says so under the table and keeps
them out of the figures, so no configuration is counted twice or silently picked."""

from __future__ import annotations

from dataclasses import replace

from mlscope.evaluation.report import conflicts_footnote, footnotes, latency_by_batch, table
from mlscope.evaluation.results import SPAN_NAME, EvaluationResult
from tests.query.query_server import Served
from tests.store.test_store_conformance import T0, TRACE, columns_of, span_row

RESULT = EvaluationResult(
    run_id="r1", model="resnet18", model_version="1.0.0", task="image-classification", framework="pytorch",
    framework_version="2.5.0", execution_provider="cpu", system="0123456789abcdef", system_name="host",
    system_description="2 CPUs", batch_size=1, scenario="single-stream", level="model", queries=20, samples=20,
    latency_mean_ns=1.1e7, latency_p50_ns=10_000_000, latency_p90_ns=12_000_000, latency_p99_ns=13_000_000,
    throughput=None, accuracy_top1=None, accuracy_top5=None, accuracy_samples=0, server_qps=None,
    server_bound_ns=0, server_bound_met=None, divergence_reference="", divergence_samples=0,
    divergence_max_abs_diff=None, divergence_top1_agreement=None,
)


def _evaluation_span(span_id: str, result: EvaluationResult) -> dict:
    attributes = result.span_attributes()
    return span_row(span_id, "", SPAN_NAME, T0, T0 + 1_000, level="application", attr_keys=list(attributes),
                    attr_values=[str(value) for value in attributes.values()])


async def test_every_copy_is_listed_flagged_and_left_out_of_the_figures(served: Served) -> None:
    kept = _evaluation_span("00000000000000e1", RESULT)
    disputed = _evaluation_span("00000000000000e2", replace(RESULT, batch_size=8, latency_p50_ns=40_000_000))
    served.store.insert("span_rows", columns_of([kept, disputed]))
    served.store.insert("span_rows", columns_of([kept, disputed]))  # a retry folds
    served.store.insert("span_rows", columns_of([_evaluation_span(  # the same ids, other figures
        "00000000000000e2", replace(RESULT, batch_size=8, latency_p50_ns=1_000_000))]))

    status, body = await served.get("/api/evaluations?model=resnet18")
    assert status == 200
    rows = body["evaluations"]
    assert [(row["span_id"], row["conflict"]) for row in rows] == [
        ("00000000000000e1", 0), ("00000000000000e2", 1), ("00000000000000e2", 1)]
    assert rows[0]["latency_p50_ns"] == 10_000_000
    assert {row["latency_p50_ns"] for row in rows[1:]} == {40_000_000, 1_000_000}
    assert rows[1]["content_hash"] < rows[2]["content_hash"]
    assert {row["trace_id"] for row in rows} == {TRACE} and len({row["content_hash"] for row in rows}) == 3
    status, body = await served.get("/api/evaluations?conflict=1")
    assert [row["span_id"] for row in body["evaluations"]] == ["00000000000000e2"] * 2

    cells = table(rows)
    conflict_column = [column["name"] for column in cells["columns"]].index("conflict")
    assert [line[conflict_column] for line in cells["rows"]] == ["-", "yes+", "yes+"]
    assert footnotes(rows) == conflicts_footnote(rows) != ""
    assert conflicts_footnote(rows).startswith("+ 1 evaluation(s) were sent more than once with different content")
    assert conflicts_footnote(rows[:1]) == ""
    # Batch 8 has only disputed copies: the figure leaves it out rather than pick one.
    assert latency_by_batch(rows) == {"pytorch": {1: 10.0}}
