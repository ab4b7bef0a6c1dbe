"""Diff of two timelines: pure, no store."""

from __future__ import annotations

import pytest

from mlscope.conventions import EVALUATION_PREFIX, EVALUATION_SPAN
from mlscope.query.diff import diff_json, diff_timelines, subtree
from mlscope.query.timeline import build_timeline
from tests.query.model_trace import RUN_TRACE, model_run
from tests.query.trace_fixtures import MS, insert, row, spans

OTHER_TRACE = "0000000000000000000000000000b002"


def test_layers_matched_by_path_with_both_latencies() -> None:
    a = build_timeline(RUN_TRACE, spans(model_run(conv_ms=33)))
    b = build_timeline(OTHER_TRACE, spans(model_run(OTHER_TRACE, conv_ms=11, extra_layer=True)))
    body = diff_json(diff_timelines(a, b))
    layers = {row["path"]: row for row in body["layers"]}
    assert set(layers) == {"", "conv1", "block.conv"}
    assert layers["block.conv"] == {"path": "block.conv", "a_ns": 33 * MS, "b_ns": 11 * MS, "delta_ns": -22 * MS,
                                    "ratio": 1 / 3, "a_calls": 1, "b_calls": 1}
    assert layers["conv1"]["delta_ns"] == 0 and layers["conv1"]["ratio"] == 1.0
    assert body["layers"][0]["path"] == "block.conv"  # largest change first
    assert [row["path"] for row in body["a_only"]] == ["relu"]  # a span named conv1, at path relu
    assert [(row["path"], row["type"]) for row in body["b_only"]] == [("fc", "Linear")]
    assert (body["a"], body["b"]) == (RUN_TRACE, OTHER_TRACE)


def test_ops_and_levels_on_both_sides() -> None:
    a = build_timeline(RUN_TRACE, spans(model_run(conv_ms=33)))
    b = build_timeline(OTHER_TRACE, spans(model_run(OTHER_TRACE, conv_ms=11, extra_layer=True)))
    body = diff_json(diff_timelines(a, b))
    ops = {row["name"]: row for row in body["ops"]}
    assert (ops["aten::conv2d"]["a_ns"], ops["aten::conv2d"]["b_ns"]) == (57 * MS, 35 * MS)
    assert (ops["aten::relu"]["b_ns"], ops["aten::relu"]["ratio"]) == (0, 0.0)
    levels = {row["level"]: row for row in body["levels"]}
    assert levels["model"]["a_ns"] == levels["model"]["b_ns"] == 98 * MS
    assert levels["library"]["a_calls"] == 3 and levels["library"]["b_calls"] == 2


def test_a_side_without_time_has_no_ratio() -> None:
    empty = build_timeline(RUN_TRACE, [])
    b = build_timeline(OTHER_TRACE, spans(model_run(OTHER_TRACE)))
    body = diff_json(diff_timelines(empty, b))
    assert body["layers"] == [] and {row["path"] for row in body["b_only"]} == {"", "conv1", "relu", "block.conv"}
    assert all(row["ratio"] is None for row in body["ops"])


def test_subtree_is_a_timeline_of_its_own() -> None:
    timeline = build_timeline(RUN_TRACE, spans(model_run()))
    layer_tree = subtree(timeline, "0000000000000005")  # conv1 and its op
    assert [(item.span.name, item.depth) for item in layer_tree.spans] == [("conv1", 0), ("aten::conv2d", 1)]
    predict = subtree(timeline, "0000000000000003")
    assert predict.spans[0].span.name == "predict" and len(predict.spans) == 8
    assert subtree(timeline, "ffffffffffffffff") is None


# --- over HTTP, both store backends -------------------------------------------------------------


def evaluation_span(span_id: str, trace_id: str, batch_size: int) -> dict:
    """An `mlscope.evaluation` span over the model run (its predict span becomes its child)."""
    return row(span_id, "0000000000000001", EVALUATION_SPAN, 5, 99, "application", trace_id=trace_id,
               attributes={f"{EVALUATION_PREFIX}model": "tiny", f"{EVALUATION_PREFIX}batch_size": str(batch_size)})


def under_evaluation(rows: list[dict], evaluation_id: str) -> list[dict]:
    return [dict(r, parent_span_id=evaluation_id) if r["name"] == "predict" else r for r in rows]


async def test_diff_route_by_trace_and_by_evaluation(served) -> None:
    a_rows = under_evaluation(model_run(conv_ms=33), "00000000000000e1") + [evaluation_span("00000000000000e1", RUN_TRACE, 1)]
    b_rows = under_evaluation(model_run(OTHER_TRACE, conv_ms=11, extra_layer=True), "00000000000000e8") + [
        evaluation_span("00000000000000e8", OTHER_TRACE, 8)]
    insert(served.store, a_rows + b_rows)
    status, by_trace = await served.get(f"/api/diff?a={RUN_TRACE}&b={OTHER_TRACE}")
    assert status == 200
    assert {row["path"]: (row["a_ns"], row["b_ns"]) for row in by_trace["layers"]}["block.conv"] == (33 * MS, 11 * MS)
    status, by_evaluation = await served.get("/api/diff?a=00000000000000E1&b=00000000000000e8")
    assert status == 200, by_evaluation
    assert by_evaluation["a"] == f"{RUN_TRACE}/00000000000000e1"
    assert by_evaluation["layers"] == by_trace["layers"]
    # The evaluation's subtree leaves the run's own spans out: no preprocess, no run.
    levels = {row["level"]: row for row in by_evaluation["levels"]}
    assert levels["model"]["a_ns"] == 88 * MS


@pytest.mark.parametrize("query, status", [
    ("", 400), (f"?a={RUN_TRACE}", 400), (f"?a={RUN_TRACE}&b=xyz", 400), (f"?a={RUN_TRACE}&b={'1' * 31}", 400),
    (f"?a={RUN_TRACE}&b={'f' * 32}", 404), (f"?a={RUN_TRACE}&b={'f' * 16}", 404)])
async def test_diff_route_errors(served, query: str, status: int) -> None:
    insert(served.store, model_run())
    answer_status, body = await served.get(f"/api/diff{query}")
    assert answer_status == status and len(body["error"]) < 200
