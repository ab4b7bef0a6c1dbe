"""Exports are pure functions of a timeline: Jaeger UI JSON and Chrome/Perfetto trace events."""

from __future__ import annotations

import json

from mlscope.conventions import HW_POWER_METRIC, SYSTEM_CPU_UTILIZATION
from mlscope.query.analysis import MetricSample
from mlscope.query.export import to_jaeger, to_perfetto
from mlscope.query.perfetto import assign_lanes
from mlscope.query.timeline import build_timeline
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, row, spans

TIMELINE = build_timeline(TRACE, spans(KNOWN + [row("00000000000000f7", "00000000000000a1", "upload", 95, 99,
                                                    service="other")]))


def test_jaeger_document() -> None:
    document = json.loads(json.dumps(to_jaeger(TIMELINE)))  # plain JSON, nothing Python-only
    (trace,) = document["data"]
    assert trace["traceID"] == TRACE
    by_name = {span["operationName"]: span for span in trace["spans"]}
    root, predict = by_name["pipeline"], by_name["predict"]
    assert root["references"] == []
    assert predict["references"] == [{"refType": "CHILD_OF", "traceID": TRACE, "spanID": "00000000000000a1"}]
    assert (predict["startTime"], predict["duration"]) == ((T0 + 10 * MS) // 1000, 80_000)  # µs
    assert {"key": "mlscope.level", "type": "string", "value": "model"} in predict["tags"]
    assert root["logs"] == [{"timestamp": T0 // 1000, "fields": [
        {"key": "event", "type": "string", "value": "started"}, {"key": "step", "type": "string", "value": "1"}]}]
    processes = trace["processes"]
    assert {p["serviceName"] for p in processes.values()} == {"svc", "other"}
    assert processes[by_name["upload"]["processID"]]["serviceName"] == "other"
    assert processes[root["processID"]]["tags"] == [{"key": "service.name", "type": "string", "value": "svc"}]


def test_perfetto_document() -> None:
    document = json.loads(json.dumps(to_perfetto(TIMELINE)))
    complete = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in complete] == ["pipeline", "predict", "conv1", "relu", "postprocess", "upload"]
    by_name = {e["name"]: e for e in complete}
    assert (by_name["pipeline"]["ts"], by_name["pipeline"]["dur"]) == (0, 100_000)  # µs from the trace start
    assert (by_name["relu"]["ts"], by_name["relu"]["dur"], by_name["relu"]["cat"]) == (40_000, 30_000, "layer")
    assert by_name["upload"]["pid"] != by_name["pipeline"]["pid"]
    names = {(e["pid"], e["args"]["name"]) for e in document["traceEvents"] if e["name"] == "process_name"}
    assert names == {(by_name["pipeline"]["pid"], "svc"), (by_name["upload"]["pid"], "other")}
    # conv1 (20..50) and relu (40..70) overlap: they cannot nest on one thread.
    assert by_name["conv1"]["tid"] != by_name["relu"]["tid"]
    assert by_name["predict"]["tid"] == by_name["pipeline"]["tid"] == by_name["conv1"]["tid"]


def test_lanes_always_nest() -> None:
    rows = [row(f"{i:02x}", "", f"s{i}", start, end) for i, (start, end) in enumerate(
        [(0, 100), (0, 50), (10, 20), (15, 60), (50, 100), (55, 58), (55, 58), (99, 120), (120, 130)])]
    stored = spans(rows)
    lanes = assign_lanes(stored)
    for lane in set(lanes.values()):
        on_lane = [s for s in stored if lanes[s.span_id] == lane]
        for a in on_lane:
            for b in on_lane:
                disjoint = a.end_ns <= b.start_ns or b.end_ns <= a.start_ns
                nested = (a.start_ns <= b.start_ns and b.end_ns <= a.end_ns) or (
                    b.start_ns <= a.start_ns and a.end_ns <= b.end_ns)
                assert disjoint or nested, (a.name, b.name)
    # Only (15, 60) and (99, 120) stick out of a running span; equal intervals nest.
    assert sorted(name for name, lane in lanes.items() if lane) == ["03", "07"]


def test_perfetto_counter_tracks_share_the_time_axis() -> None:
    samples = [
        MetricSample("svc", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + 20 * MS, 0.5),
        MetricSample("svc", HW_POWER_METRIC, "gauge", "W", T0 + 30 * MS, 75.0, {"hw.id": "gpu0"}),
        MetricSample("sampler-only", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + 40 * MS, 0.25),
    ]
    document = json.loads(json.dumps(to_perfetto(TIMELINE, samples)))
    counters = [e for e in document["traceEvents"] if e["ph"] == "C"]
    spans_pid = next(e["pid"] for e in document["traceEvents"] if e["ph"] == "X" and e["name"] == "pipeline")
    assert [(e["name"], e["ts"], e["args"]) for e in counters] == [
        (SYSTEM_CPU_UTILIZATION, 20_000, {"1": 0.5}), (f"{HW_POWER_METRIC} hw.id=gpu0", 30_000, {"W": 75.0}),
        (SYSTEM_CPU_UTILIZATION, 40_000, {"1": 0.25})]
    assert counters[0]["pid"] == counters[1]["pid"] == spans_pid
    processes = {e["pid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"}
    assert processes[counters[2]["pid"]] == "sampler-only"


def test_jaeger_export_has_no_counters_and_the_query_api_envelope() -> None:
    document = to_jaeger(TIMELINE, [MetricSample("svc", HW_POWER_METRIC, "gauge", "W", T0, 1.0)])
    assert set(document) == {"data", "total", "limit", "offset", "errors"}
    assert (document["total"], document["errors"]) == (1, None)
