"""The Perfetto protobuf export read back (tests/query/perfetto_reader.py: classes from a
descriptor with Perfetto's field numbers): slices nest as the spans do, at the spans'
nanoseconds; counters carry the samples; names are data."""

from __future__ import annotations

from typing import Any

from mlscope.conventions import HW_POWER_METRIC, SYSTEM_CPU_UTILIZATION
from mlscope.query.analysis import MetricSample
from mlscope.query.perfetto import to_perfetto_proto
from mlscope.query.timeline import Timeline, build_timeline
from tests.query.perfetto_reader import process_name, read
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, row, spans


def timeline_of(rows: list[dict[str, Any]]) -> Timeline:
    return build_timeline(TRACE, spans(rows))


HOSTILE = "\"}]\n<script>alert(1)</script>\x00 ☃ '; DROP TABLE spans; --"
TIMELINE = timeline_of(KNOWN + [
    row("00000000000000f7", "00000000000000a1", "upload", 95, 99, service="other"),
    row("00000000000000f8", "00000000000000d5", HOSTILE, 91, 92, service="svc", attributes={HOSTILE: HOSTILE}),
])


def test_slices_are_the_spans_at_their_nanoseconds_nested_as_the_spans() -> None:
    result = read(to_perfetto_proto(TIMELINE))
    by_id = {item.span.span_id: item for item in TIMELINE.spans}
    assert set(result.slices) == set(by_id)
    for span_id, piece in result.slices.items():
        item = by_id[span_id]
        assert (piece.name, piece.begin_ns, piece.end_ns) == (item.span.name, item.span.start_ns, item.span.end_ns)
        assert piece.categories == [item.span.level]
        assert piece.annotations == {"span_id": span_id, "parent_span_id": item.span.parent_span_id,
                                     "self_ns": item.self_ns, **item.span.attributes}
        assert process_name(result, piece.track) == item.span.service
    parents = {result.slices[span_id].name: result.slices[span_id].parent for span_id in by_id}
    # relu overlaps conv1 (its sibling): it cannot nest on conv1's track, so it has one of its own.
    assert {name: parent.name if parent else None for name, parent in parents.items()} == {
        "pipeline": None, "predict": "pipeline", "conv1": "predict", "relu": None, "postprocess": "pipeline",
        HOSTILE: "postprocess", "upload": None}
    assert result.slices["00000000000000c4"].track != result.slices["00000000000000c3"].track


def test_processes_and_threads_are_tracks() -> None:
    result = read(to_perfetto_proto(TIMELINE))
    processes = {uuid: d.process for uuid, d in result.tracks.items() if d.HasField("process")}
    assert sorted(p.process_name for p in processes.values()) == ["other", "svc"]
    threads = [d for d in result.tracks.values() if d.HasField("thread")]
    assert {d.thread.tid for d in threads} == set(range(1, len(threads) + 1))  # unique across processes
    for thread in threads:
        assert thread.thread.pid == processes[thread.parent_uuid].pid
    used = {piece.track for piece in result.slices.values()}
    assert used == {uuid for uuid, d in result.tracks.items() if d.HasField("thread")}


def test_counter_tracks_carry_every_sample() -> None:
    samples = [
        MetricSample("svc", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + 20 * MS, 0.5),
        MetricSample("svc", HW_POWER_METRIC, "gauge", "W", T0 + 30 * MS, 75.25, {"hw.id": "gpu0"}),
        MetricSample("svc", HW_POWER_METRIC, "gauge", "W", T0 + 60 * MS, 80.5, {"hw.id": "gpu0"}),
        MetricSample("svc", HW_POWER_METRIC, "gauge", "W", T0 + 60 * MS, 10.0, {"hw.id": "gpu1"}),
        MetricSample("sampler-only", SYSTEM_CPU_UTILIZATION, "gauge", "1", T0 + 40 * MS, 0.25),
    ]
    result = read(to_perfetto_proto(TIMELINE, samples))
    points = {(process_name(result, track), result.tracks[track].name): values
              for track, values in result.counters.items()}
    assert points == {
        ("svc", f"{SYSTEM_CPU_UTILIZATION} (1)"): [(T0 + 20 * MS, 0.5)],
        ("svc", f"{HW_POWER_METRIC} hw.id=gpu0 (W)"): [(T0 + 30 * MS, 75.25), (T0 + 60 * MS, 80.5)],
        ("svc", f"{HW_POWER_METRIC} hw.id=gpu1 (W)"): [(T0 + 60 * MS, 10.0)],
        ("sampler-only", f"{SYSTEM_CPU_UTILIZATION} (1)"): [(T0 + 40 * MS, 0.25)],
    }
    assert len(result.slices) == len(TIMELINE.spans)  # the spans are still all there


def test_lanes_nest_whatever_the_overlaps() -> None:
    # Equal intervals, zero-length spans, a child ending with its parent, siblings that overlap.
    intervals = [(0, 100), (0, 50), (10, 20), (15, 60), (50, 100), (55, 58), (55, 58), (58, 58), (99, 120),
                 (120, 130), (60, 100), (100, 100)]
    rows = [row(f"{i:016x}", "", f"s{i}", start, end) for i, (start, end) in enumerate(intervals)]
    timeline = Timeline(TRACE, tuple(item for item in timeline_of(rows).spans), ())
    result = read(to_perfetto_proto(timeline))  # `read` checks that each slice ends within its parent
    assert {span_id: (piece.begin_ns, piece.end_ns) for span_id, piece in result.slices.items()} == {
        f"{i:016x}": (T0 + start * MS, T0 + end * MS) for i, (start, end) in enumerate(intervals)}


def test_an_empty_timeline_is_an_empty_trace() -> None:
    assert read(to_perfetto_proto(Timeline(TRACE, (), ()))).tracks == {}
