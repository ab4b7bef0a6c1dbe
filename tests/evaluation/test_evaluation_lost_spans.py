"""An evaluated configuration whose measurement lost spans says so: the count on its result
(the `evaluations` table's `spans_dropped`), `mlscope.dropped.<level>` on its span, and a marked
cell with a footnote in the printed table."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from mlscope.agents import Agent, start_agent
from mlscope.agents.otlp_exporter import EncodedSpanExporter, ExporterDecorator
from mlscope.evaluation import Plan, evaluate
from mlscope.evaluation.report import lost_spans_footnote, table
from mlscope.manifests import AssetCache, load_manifest


class RefusingDeepSpans(ExporterDecorator):
    """Keeps the SDK's spans (model and application level) and refuses every encoded request
    (the deep levels' spans), as a collector refusing them would."""

    def __init__(self, exporter: EncodedSpanExporter) -> None:
        super().__init__(exporter)
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_a_configuration_that_lost_deep_spans_counts_them_on_its_result_span_and_table_row() -> None:
    recorders: list[RefusingDeepSpans] = []

    def refusing(exporter: EncodedSpanExporter) -> RefusingDeepSpans:
        recorders.append(RefusingDeepSpans(exporter))
        return recorders[-1]

    agents: dict[str, Agent] = {}

    def agent_at(level: str) -> Agent:
        if level not in agents:
            agents[level] = start_agent("lost-spans-test", "http://127.0.0.1:9", level, wrap_exporter=refusing)
        return agents[level]

    plan = Plan(manifests=(load_manifest("digits"),), frameworks=("pytorch",), batch_sizes=(1, 2),
                levels=("model", "layer"), repetitions=3, warmup=1)
    results = evaluate(plan, agent_at, AssetCache())
    for agent in agents.values():
        agent.shutdown(timeout_s=10)
    by_level = {level: [result for result in results if result.level == level] for level in plan.levels}
    assert [result.spans_dropped for result in by_level["model"]] == [0, 0]
    # Each layer-level configuration lost its own layer spans: at least one a timed query.
    assert all(result.spans_dropped >= plan.repetitions for result in by_level["layer"])
    evaluation_spans = [span for recorder in recorders for span in recorder.spans if span.name == "mlscope.evaluation"]
    dropped_on_span = {span.attributes["mlscope.evaluation.batch_size"]: (span.attributes.get("mlscope.dropped.layer"),
                                                                          span.attributes["mlscope.evaluation.spans_dropped"])
                       for span in evaluation_spans if span.attributes["mlscope.evaluation.level"] == "layer"}
    assert dropped_on_span == {result.batch_size: (result.spans_dropped, result.spans_dropped) for result in by_level["layer"]}

    rows = [vars(result) for result in results]
    printed = table(rows)
    lost_column = [column["name"] for column in printed["columns"]].index("lost spans")
    assert [row[lost_column] for row in printed["rows"]] == ["-", "-"] + [f"{r.spans_dropped}*" for r in by_level["layer"]]
    total = sum(result.spans_dropped for result in by_level["layer"])
    assert lost_spans_footnote(rows).startswith(f"* 2 configuration(s) lost {total} spans of their trace")
    assert lost_spans_footnote(rows[:2]) == ""
