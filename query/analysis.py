"""Where a trace's time goes: pure functions over one timeline (query/timeline.py), no I/O.

- by level: spans, summed duration and summed self time per level;
- top spans and op types by self time (an op type is a library span's name: `aten::conv2d`);
- idle time: a span's time that none of its children covers (its self time, for spans that have
  children), largest first;
- the critical path: from the longest root, at each span the child that *ends last* (ties: the
  longer one), down to a leaf. The last-ending child is the one that holds its parent open, so
  shortening anything off this chain cannot shorten the parent (Jaeger's critical path walks the
  same way, last-finishing child first). Each entry carries its share of the root's duration;
- layers, grouped by module path (`mlscope.layer.path`): type, calls, total, mean, share of the
  model spans' time and the shapes recorded;
- hardware: per model span, each metric sampled in its window (the `metrics` table's samples,
  read by the caller) summarized: gauges as their mean, cumulative counters as their increase.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlscope.conventions import LAYER_INPUT_SHAPES, LAYER_OUTPUT_SHAPES, LAYER_PATH, LAYER_TYPE, LEVELS, parse_level

from mlscope.store import sql_string

from .timeline import Timeline, TimelineSpan

TOP = 20  # rows of each ranked table

# parse_level fails at import should a level be renamed in the conventions.
MODEL_LEVEL, LAYER_LEVEL, LIBRARY_LEVEL = parse_level("model"), parse_level("layer"), parse_level("library")
# Metric kinds (collector/otlp.py) whose samples are cumulative: a window's figure is the increase.
CUMULATIVE_KINDS = frozenset({"sum"})


@dataclass(frozen=True)
class MetricSample:
    """One stored metric data point (a `metrics` row), reduced to what a summary needs."""

    service: str
    name: str
    kind: str
    unit: str
    time_ns: int
    value: float
    attributes: Mapping[str, str] = field(default_factory=dict)

    def series(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.name, tuple(sorted(self.attributes.items())))


@dataclass(frozen=True)
class LevelTime:
    level: str
    spans: int
    total_ns: int
    self_ns: int


@dataclass(frozen=True)
class SpanTime:
    span_id: str
    name: str
    level: str
    duration_ns: int
    self_ns: int


@dataclass(frozen=True)
class OpType:
    name: str
    calls: int
    total_ns: int
    self_ns: int
    mean_ns: float


@dataclass(frozen=True)
class LayerRow:
    path: str
    type: str
    calls: int
    total_ns: int
    mean_ns: float
    share_of_model: float | None  # None when the trace has no model spans
    input_shapes: tuple[str, ...]
    output_shapes: tuple[str, ...]


@dataclass(frozen=True)
class PathStep:
    span_id: str
    name: str
    level: str
    depth: int
    duration_ns: int
    self_ns: int
    share: float  # of the root's duration


@dataclass(frozen=True)
class IdleSpan:
    span_id: str
    name: str
    level: str
    duration_ns: int
    idle_ns: int
    share: float  # of the span's own duration


@dataclass(frozen=True)
class MetricSummary:
    name: str
    unit: str
    samples: int
    mean: float | None  # gauges
    increase: float | None  # cumulative counters, summed over their series


@dataclass(frozen=True)
class SpanHardware:
    span_id: str
    name: str
    metrics: tuple[MetricSummary, ...]


@dataclass(frozen=True)
class Analysis:
    trace_id: str
    by_level: tuple[LevelTime, ...]
    top_self: tuple[SpanTime, ...]
    op_types: tuple[OpType, ...]
    layers: tuple[LayerRow, ...]
    critical_path: tuple[PathStep, ...]
    idle: tuple[IdleSpan, ...]
    hardware: tuple[SpanHardware, ...]


def _duration(item: TimelineSpan) -> int:
    return item.span.duration_ns


def time_by_level(timeline: Timeline) -> tuple[LevelTime, ...]:
    """Every level in LEVELS order (levels without spans left out)."""
    spans: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    self_ns: dict[str, int] = defaultdict(int)
    for item in timeline.spans:
        level = item.span.level
        spans[level] += 1
        total[level] += _duration(item)
        self_ns[level] += item.self_ns
    order = {level: rank for rank, level in enumerate(LEVELS)}
    return tuple(LevelTime(level, spans[level], total[level], self_ns[level])
                 for level in sorted(spans, key=lambda level: (order.get(level, len(order)), level)))


def top_self(timeline: Timeline, top: int = TOP) -> tuple[SpanTime, ...]:
    ranked = sorted(timeline.spans, key=lambda item: (-item.self_ns, item.span.span_id))[:top]
    return tuple(SpanTime(i.span.span_id, i.span.name, i.span.level, _duration(i), i.self_ns) for i in ranked)


def op_types(timeline: Timeline, top: int | None = None) -> tuple[OpType, ...]:
    """Library spans grouped by name, by summed self time (largest first)."""
    calls: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    self_ns: dict[str, int] = defaultdict(int)
    for item in timeline.spans:
        if item.span.level == LIBRARY_LEVEL:
            name = item.span.name
            calls[name] += 1
            total[name] += _duration(item)
            self_ns[name] += item.self_ns
    rows = [OpType(name, calls[name], total[name], self_ns[name], total[name] / calls[name]) for name in calls]
    rows.sort(key=lambda row: (-row.self_ns, row.name))
    return tuple(rows[:top] if top is not None else rows)


def _distinct(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({value for value in values if value}))


def layer_table(timeline: Timeline) -> tuple[LayerRow, ...]:
    """Layer spans grouped by module path, by total time (largest first). The share is of the
    summed duration of the model spans, the time the model was running."""
    model_ns = sum(_duration(item) for item in timeline.spans if item.span.level == MODEL_LEVEL)
    by_path: dict[str, list[TimelineSpan]] = defaultdict(list)
    for item in timeline.spans:
        if item.span.level == LAYER_LEVEL and LAYER_PATH in item.span.attributes:
            by_path[item.span.attributes[LAYER_PATH]].append(item)
    rows = []
    for path, items in by_path.items():
        total = sum(_duration(item) for item in items)
        attributes = [item.span.attributes for item in items]
        rows.append(LayerRow(
            path=path,
            type=next((a[LAYER_TYPE] for a in attributes if a.get(LAYER_TYPE)), ""),
            calls=len(items),
            total_ns=total,
            mean_ns=total / len(items),
            share_of_model=total / model_ns if model_ns else None,
            input_shapes=_distinct(a.get(LAYER_INPUT_SHAPES, "") for a in attributes),
            output_shapes=_distinct(a.get(LAYER_OUTPUT_SHAPES, "") for a in attributes),
        ))
    rows.sort(key=lambda row: (-row.total_ns, row.path))
    return tuple(rows)


def _children(timeline: Timeline) -> dict[str, list[TimelineSpan]]:
    """span id -> its children, from the pre-order and depths (a child follows its parent at
    depth + 1 before any span at the parent's depth or above)."""
    children: dict[str, list[TimelineSpan]] = defaultdict(list)
    path: list[TimelineSpan] = []
    for item in timeline.spans:
        del path[item.depth:]
        if path:
            children[path[-1].span.span_id].append(item)
        path.append(item)
    return children


def critical_path(timeline: Timeline) -> tuple[PathStep, ...]:
    """From the longest root down, at each span its child that ends last (ties: the longer)."""
    roots = [item for item in timeline.spans if item.depth == 0]
    if not roots:
        return ()
    children = _children(timeline)
    current = max(roots, key=lambda item: (_duration(item), -item.span.start_ns))
    root_ns = _duration(current)
    steps = []
    while True:
        span = current.span
        share = span.duration_ns / root_ns if root_ns else 1.0
        steps.append(PathStep(span.span_id, span.name, span.level, current.depth, span.duration_ns,
                              current.self_ns, share))
        below = children.get(span.span_id)
        if not below:
            return tuple(steps)
        current = max(below, key=lambda item: (item.span.end_ns, _duration(item)))


def idle_spans(timeline: Timeline, top: int = TOP) -> tuple[IdleSpan, ...]:
    """Spans with children, by the time none of their children covers (largest first)."""
    children = _children(timeline)
    rows = [
        IdleSpan(item.span.span_id, item.span.name, item.span.level, _duration(item), item.self_ns,
                 item.self_ns / _duration(item) if _duration(item) else 0.0)
        for item in timeline.spans if item.span.span_id in children
    ]
    rows.sort(key=lambda row: (-row.idle_ns, row.span_id))
    return tuple(rows[:top])


def _summarize(samples: Sequence[MetricSample]) -> MetricSummary:
    """One metric's samples in a window: a gauge's mean over all its series, or a cumulative
    counter's increase (last - first per series, summed)."""
    first = samples[0]
    if first.kind in CUMULATIVE_KINDS:
        by_series: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)
        for sample in samples:
            by_series[sample.series()].append(sample.value)
        increase = sum(values[-1] - values[0] for values in by_series.values())
        return MetricSummary(first.name, first.unit, len(samples), None, increase)
    return MetricSummary(first.name, first.unit, len(samples), sum(s.value for s in samples) / len(samples), None)


def span_hardware(timeline: Timeline, samples: Iterable[MetricSample]) -> tuple[SpanHardware, ...]:
    """Per model span, the samples of its service stamped within its window, by metric name.
    A sample covers the interval since the one before, so the first sample after the span's end
    is counted too: without it a span shorter than the sampling interval would have none."""
    by_service: dict[str, list[MetricSample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.time_ns):
        by_service[sample.service].append(sample)
    rows = []
    for item in timeline.spans:
        span = item.span
        if span.level != MODEL_LEVEL:
            continue
        window: dict[str, list[MetricSample]] = defaultdict(list)
        closing: dict[tuple[str, tuple[tuple[str, str], ...]], MetricSample] = {}
        for sample in by_service.get(span.service, ()):
            if span.start_ns <= sample.time_ns <= span.end_ns:
                window[sample.name].append(sample)
            elif sample.time_ns > span.end_ns:
                closing.setdefault(sample.series(), sample)
        for sample in closing.values():
            window[sample.name].append(sample)
        if window:
            metrics = tuple(_summarize(window[name]) for name in sorted(window))
            rows.append(SpanHardware(span.span_id, span.name, metrics))
    return tuple(rows)


# --- reading samples (SQL text only; the reader runs it) -----------------------------------------

MAX_SAMPLES = 200_000  # a 100 ms sampler over a day of runs: far more than one trace's windows
_SAMPLE_COLUMNS = "service, name, kind, unit, time_ns, value, attr_keys, attr_values"
# The first sample after a span's end covers its tail (span_hardware): read a little past the trace.
SAMPLE_SLACK_NS = 10 * 10**9


def metric_samples_sql(services: Iterable[str], start_ns: int, end_ns: int) -> str:
    """The samples of `services` from `start_ns` to `end_ns` + SAMPLE_SLACK_NS, oldest first."""
    quoted = ", ".join(sql_string(service) for service in sorted(set(services))) or "''"
    return (f"SELECT {_SAMPLE_COLUMNS} FROM metrics WHERE service IN ({quoted}) "
            f"AND time_ns >= {int(start_ns)} AND time_ns <= {int(end_ns) + SAMPLE_SLACK_NS} "
            f"ORDER BY time_ns LIMIT {MAX_SAMPLES}")


def metric_sample(row: Sequence[Any]) -> MetricSample:
    """A row of metric_samples_sql's result."""
    service, name, kind, unit, time_ns, value, keys, values = row
    return MetricSample(service, name, kind, unit, int(time_ns), float(value), dict(zip(keys, values)))


def analyze(timeline: Timeline, samples: Iterable[MetricSample] = ()) -> Analysis:
    return Analysis(
        trace_id=timeline.trace_id,
        by_level=time_by_level(timeline),
        top_self=top_self(timeline),
        op_types=op_types(timeline, TOP),
        layers=layer_table(timeline),
        critical_path=critical_path(timeline),
        idle=idle_spans(timeline),
        hardware=span_hardware(timeline, samples),
    )


def _record(value: Any) -> dict[str, Any]:
    return {name: list(item) if isinstance(item, tuple) else item for name, item in vars(value).items()}


def analysis_json(analysis: Analysis) -> dict[str, Any]:
    """The body of GET /api/traces/{trace_id}/analysis (CONTRACT.md)."""
    return {
        "trace_id": analysis.trace_id,
        "by_level": [_record(row) for row in analysis.by_level],
        "top_self": [_record(row) for row in analysis.top_self],
        "op_types": [_record(row) for row in analysis.op_types],
        "layers": [_record(row) for row in analysis.layers],
        "critical_path": [_record(row) for row in analysis.critical_path],
        "idle": [_record(row) for row in analysis.idle],
        "hardware": [{"span_id": row.span_id, "name": row.name, "metrics": [_record(m) for m in row.metrics]}
                     for row in analysis.hardware],
    }
