"""Analyses over a known timeline: pure, no store."""

from __future__ import annotations

import pytest

from mlscope.conventions import HW_ENERGY_METRIC, SYSTEM_CPU_UTILIZATION
from mlscope.query.analysis import MetricSample, analysis_json, analyze
from mlscope.query.timeline import build_timeline
from tests.query.model_trace import RUN_TRACE, model_run
from tests.query.trace_fixtures import MS, T0, insert, spans


@pytest.fixture
def timeline():
    return build_timeline(RUN_TRACE, spans(model_run()))


def cpu(ms: float, value: float) -> MetricSample:
    return MetricSample("svc", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + int(ms * MS), value)


def energy(ms: float, joules: float) -> MetricSample:
    return MetricSample("svc", HW_ENERGY_METRIC, "sum", "J", T0 + int(ms * MS), joules, {"hw.id": "intel-rapl:0"})


def test_time_by_level(timeline) -> None:
    rows = {row["level"]: row for row in analysis_json(analyze(timeline))["by_level"]}
    assert list(rows) == ["application", "model", "layer", "library"]
    assert rows["application"] == {"level": "application", "spans": 1, "total_ns": 100 * MS, "self_ns": 2 * MS}
    assert (rows["model"]["spans"], rows["model"]["total_ns"]) == (2, 98 * MS)
    assert rows["layer"]["total_ns"] == (87 + 28 + 10 + 33) * MS
    assert rows["library"]["self_ns"] == (26 + 8 + 31) * MS


def test_critical_path_follows_the_child_that_ends_last(timeline) -> None:
    path = analysis_json(analyze(timeline))["critical_path"]
    assert [(step["name"], step["depth"]) for step in path] == [
        ("run", 0), ("predict", 1), ("TinyNet", 2), ("block.conv", 3), ("aten::conv2d", 4)]
    assert [round(step["share"], 2) for step in path] == [1.0, 0.88, 0.87, 0.33, 0.31]
    assert path[-1]["level"] == "library" and path[-1]["span_id"] == "000000000000000a"


def test_layers_grouped_by_module_path_not_name(timeline) -> None:
    layers = {row["path"]: row for row in analysis_json(analyze(timeline))["layers"]}
    assert set(layers) == {"", "conv1", "relu", "block.conv"}
    assert layers["relu"]["type"] == "ReLU" and layers["relu"]["calls"] == 1
    assert layers["conv1"] == {
        "path": "conv1", "type": "Conv2d", "calls": 1, "total_ns": 28 * MS, "mean_ns": 28 * MS,
        "share_of_model": 28 / 98, "input_shapes": ["1x3x8x8"], "output_shapes": ["1x4x8x8"]}
    assert layers[""]["share_of_model"] == pytest.approx(87 / 98)


def test_op_types_and_top_self_by_self_time(timeline) -> None:
    body = analysis_json(analyze(timeline))
    assert [(op["name"], op["calls"], op["self_ns"]) for op in body["op_types"]] == [
        ("aten::conv2d", 2, 57 * MS), ("aten::relu", 1, 8 * MS)]
    assert [(row["name"], row["self_ns"]) for row in body["top_self"][:3]] == [
        ("aten::conv2d", 31 * MS), ("aten::conv2d", 26 * MS), ("TinyNet", 16 * MS)]


def test_idle_time_is_the_time_no_child_covers(timeline) -> None:
    idle = analysis_json(analyze(timeline))["idle"]
    assert (idle[0]["name"], idle[0]["idle_ns"]) == ("TinyNet", 16 * MS)
    assert idle[0]["share"] == pytest.approx(16 / 87)
    assert "aten::conv2d" not in {row["name"] for row in idle}  # leaves have no children to wait for


def test_hardware_summarized_per_model_span(timeline) -> None:
    samples = [cpu(5, 0.1), cpu(20, 0.2), cpu(50, 0.4), cpu(100, 0.6), energy(15, 1.0), energy(90, 4.0),
               MetricSample("other-service", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + 50 * MS, 1.0)]
    hardware = {row["name"]: row for row in analysis_json(analyze(timeline, samples))["hardware"]}
    assert set(hardware) == {"preprocess", "predict"}
    predict = {metric["name"]: metric for metric in hardware["predict"]["metrics"]}
    # 20 and 50 ms inside, 100 ms the first sample after the end (it covers the span's tail).
    assert predict[SYSTEM_CPU_UTILIZATION]["samples"] == 3
    assert predict[SYSTEM_CPU_UTILIZATION]["mean"] == pytest.approx(0.4)
    assert predict[HW_ENERGY_METRIC]["increase"] == pytest.approx(3.0)
    preprocess = {metric["name"]: metric for metric in hardware["preprocess"]["metrics"]}
    assert preprocess[SYSTEM_CPU_UTILIZATION]["mean"] == pytest.approx(0.15)


def test_no_hardware_without_samples_and_empty_timeline(timeline) -> None:
    assert analysis_json(analyze(timeline))["hardware"] == []
    empty = analysis_json(analyze(build_timeline(RUN_TRACE, [])))
    assert empty["critical_path"] == [] and empty["layers"] == [] and empty["by_level"] == []


# --- over HTTP, both store backends -------------------------------------------------------------


async def test_analysis_route(served) -> None:
    insert(served.store, model_run())
    status, body = await served.get(f"/api/traces/{RUN_TRACE.upper()}/analysis")
    assert status == 200
    assert [step["name"] for step in body["critical_path"]] == ["run", "predict", "TinyNet", "block.conv", "aten::conv2d"]
    assert {row["path"] for row in body["layers"]} == {"", "conv1", "relu", "block.conv"}
    assert body["op_types"][0]["name"] == "aten::conv2d" and body["hardware"] == []


async def test_analysis_route_errors(served) -> None:
    assert (await served.get("/api/traces/nothex/analysis"))[0] == 400
    status, body = await served.get(f"/api/traces/{'f' * 32}/analysis")
    assert status == 404 and "not found" in body["error"]
