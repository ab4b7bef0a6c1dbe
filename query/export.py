"""A timeline in other tools' formats. Pure: no I/O.

- `jaeger`: the JSON that Jaeger's query API returns and Jaeger UI opens ("JSON File" upload).
- `perfetto`: Chrome trace-event JSON, which ui.perfetto.dev and chrome://tracing open: one
  complete ("X") event per span, a process per service, times in microseconds from the trace
  start. The importer nests events on a thread by time, so each service's spans are spread over
  as few threads ("lanes") as keep every thread's events properly nested: parallel children
  get lanes of their own instead of being cut. Hardware metrics sampled in the trace's window
  are counter tracks ("C" events) of their service's process, on the same time axis: one track
  per series (metric name and its attributes).
- `perfetto-proto`: the same tracks in Perfetto's own protobuf format (TrackEvent), at the
  spans' nanoseconds (query/perfetto.py).

Every exporter takes the timeline and the metric samples around it (query/analysis.py's
MetricSample; only the Perfetto forms show them) and renders a file's bytes (`EXPORTERS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mlscope.conventions import LEVEL

from .analysis import MetricSample
from .perfetto import assign_lanes, series_label, to_perfetto_proto
from .timeline import Span, Timeline, TimelineSpan

_NS_PER_US = 1000


def _us(ns: int) -> int:
    return ns // _NS_PER_US


# --- Jaeger -----------------------------------------------------------------------------------


def _jaeger_tags(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "type": "string", "value": str(value)} for key, value in attributes.items()]


def _jaeger_span(trace_id: str, item: TimelineSpan, process_id: str) -> dict[str, Any]:
    span = item.span
    tags = {
        **span.attributes,
        LEVEL: span.level,
        "span.kind": span.kind,
        "otel.scope.name": span.scope_name,
        "otel.status_code": span.status_code,
    }
    if span.status_message:
        tags["otel.status_description"] = span.status_message
    jaeger_tags = _jaeger_tags(tags)
    if span.status_code == "error":
        jaeger_tags.append({"key": "error", "type": "bool", "value": True})
    references = (
        [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": span.parent_span_id}] if span.parent_span_id else []
    )
    return {
        "traceID": trace_id,
        "spanID": span.span_id,
        "operationName": span.name,
        "references": references,
        "startTime": _us(span.start_ns),
        "duration": _us(span.duration_ns),
        "tags": jaeger_tags,
        "logs": [
            {"timestamp": _us(event.time_ns), "fields": _jaeger_tags({"event": event.name, **event.attributes})}
            for event in span.events
        ],
        "processID": process_id,
        "warnings": None,
    }


def _process_key(span: Span) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (span.service, tuple(sorted(span.resource.items())))


def jaeger_trace(timeline: Timeline) -> dict[str, Any]:
    """One trace as Jaeger's query service renders it (ui.Trace in jaeger's model/json/model.go)."""
    processes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    for item in timeline.spans:
        processes.setdefault(_process_key(item.span), f"p{len(processes) + 1}")
    spans = [_jaeger_span(timeline.trace_id, item, processes[_process_key(item.span)]) for item in timeline.spans]
    return {
        "traceID": timeline.trace_id,
        "spans": spans,
        "processes": {
            process_id: {"serviceName": service, "tags": _jaeger_tags(dict(resource))}
            for (service, resource), process_id in processes.items()
        },
        "warnings": list(timeline.warnings) or None,
    }


def structured_response(data: Any, errors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The envelope of every answer of Jaeger's query API (structuredResponse in its
    cmd/query/app/http_handler.go): `total` counts a list's items, `limit` and `offset` are 0,
    `errors` null when there are none."""
    return {
        "data": data,
        "total": len(data) if isinstance(data, list) else 0,
        "limit": 0,
        "offset": 0,
        "errors": list(errors) or None,
    }


def to_jaeger(timeline: Timeline, samples: Iterable[MetricSample] = ()) -> dict[str, Any]:
    """The JSON file Jaeger UI opens: its query API's answer for one trace."""
    return structured_response([jaeger_trace(timeline)])


# --- Perfetto / Chrome trace events -----------------------------------------------------------


def _metadata(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def _counter_events(samples: Iterable[MetricSample], origin: int, pids: dict[str, int]) -> list[dict[str, Any]]:
    """One "C" event per sample; a service with samples but no spans gets a process of its own."""
    events = []
    for sample in sorted(samples, key=lambda s: (s.time_ns, s.name)):
        if sample.service not in pids:
            pids[sample.service] = len(pids) + 1
            events.append(_metadata("process_name", pids[sample.service], 0, sample.service or "(no service)"))
        events.append({
            "name": series_label(sample),
            "ph": "C",
            "ts": (sample.time_ns - origin) / _NS_PER_US,
            "pid": pids[sample.service],
            "args": {sample.unit or "value": sample.value},
        })
    return events


def to_perfetto(timeline: Timeline, samples: Iterable[MetricSample] = ()) -> dict[str, Any]:
    origin = min((item.span.start_ns for item in timeline.spans), default=0)
    services: dict[str, list[Span]] = {}
    for item in timeline.spans:
        services.setdefault(item.span.service, []).append(item.span)
    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    lanes: dict[str, int] = {}
    for pid, (service, spans) in enumerate(services.items(), start=1):
        pids[service] = pid
        lanes.update(assign_lanes(spans))
        events.append(_metadata("process_name", pid, 0, service or "(no service)"))
        for lane in sorted({lanes[span.span_id] for span in spans}):
            events.append(_metadata("thread_name", pid, lane + 1, f"lane {lane + 1}"))
    for item in timeline.spans:
        span = item.span
        events.append({
            "name": span.name,
            "cat": span.level,
            "ph": "X",
            "ts": (span.start_ns - origin) / _NS_PER_US,
            "dur": span.duration_ns / _NS_PER_US,
            "pid": pids[span.service],
            "tid": lanes[span.span_id] + 1,
            "args": {"span_id": span.span_id, "parent_span_id": span.parent_span_id, "self_ns": item.self_ns,
                     **span.attributes},
        })
    events.extend(_counter_events(samples, origin, pids))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"trace_id": timeline.trace_id, "start_ns": origin, "warnings": list(timeline.warnings)},
    }


# --- the formats --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exporter:
    """One export format: how a timeline and its samples become a file's bytes."""

    render: Callable[[Timeline, Iterable[MetricSample]], bytes]
    media_type: str
    suffix: str  # of the file name


def _json(document: Callable[[Timeline, Iterable[MetricSample]], dict[str, Any]]) -> Callable[..., bytes]:
    # As the API's JSON answers: UTF-8 text, and no NaN, which JSON has not.
    return lambda timeline, samples: json.dumps(document(timeline, samples), ensure_ascii=False,
                                                allow_nan=False).encode()


EXPORTERS: dict[str, Exporter] = {
    "jaeger": Exporter(_json(to_jaeger), "application/json", "jaeger.json"),
    "perfetto": Exporter(_json(to_perfetto), "application/json", "perfetto.json"),
    "perfetto-proto": Exporter(to_perfetto_proto, "application/x-protobuf", "pftrace"),
}
