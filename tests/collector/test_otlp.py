"""The pure decoder: OTLP messages (protobuf or OTLP/JSON) -> store columns."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from mlscope.collector.otlp import (
    Encoding,
    MalformedRequest,
    any_value_text,
    parse_metrics_request,
    parse_trace_request,
    series_hash,
)
from mlscope.collector import otlp
from mlscope.store.model import METRIC_POINTS, SPAN_ROWS

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
ROOT_ID = bytes.fromhex("b7ad6b7169203331")
CHILD_ID = bytes.fromhex("00f067aa0ba902b7")
ANY_TIME = (0, 2**64 - 1)
"""These tests are about fields and use small times; the stored time window has its own tests."""


def decode_traces(request: ExportTraceServiceRequest) -> otlp.Decoded:
    return otlp.decode_traces(request, ANY_TIME)


def decode_metrics(request: ExportMetricsServiceRequest) -> otlp.Decoded:
    return otlp.decode_metrics(request, ANY_TIME)


def attribute(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def trace_request(*spans: Span, resource: list[KeyValue] | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            {
                "resource": {"attributes": resource if resource is not None else [attribute("service.name", string_value="svc")]},
                "scope_spans": [{"scope": {"name": "lib", "version": "1.2"}, "spans": list(spans)}],
            }
        ]
    )


def rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (AnyValue(string_value="héllo"), "héllo"),
        (AnyValue(string_value=""), ""),
        (AnyValue(int_value=-42), "-42"),
        (AnyValue(int_value=2**63 - 1), "9223372036854775807"),
        (AnyValue(double_value=0.1), "0.1"),
        (AnyValue(double_value=3.0), "3.0"),
        (AnyValue(bool_value=True), "true"),
        (AnyValue(bool_value=False), "false"),
        (AnyValue(bytes_value=b"\x00\xff"), "00ff"),
        (AnyValue(), ""),
        (
            AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a"), AnyValue(bool_value=True)])),
            '[1,"a",true]',
        ),
        (
            AnyValue(
                kvlist_value=KeyValueList(
                    values=[
                        attribute("shape", array_value=ArrayValue(values=[AnyValue(int_value=8), AnyValue(int_value=3)])),
                        attribute("raw", bytes_value=b"\x01"),
                        attribute("x", double_value=1.5),
                    ]
                )
            ),
            '{"shape":[8,3],"raw":"01","x":1.5}',
        ),
    ],
)
def test_attribute_values_become_strings(value: AnyValue, text: str) -> None:
    assert any_value_text(value) == text
    decoded = decode_traces(trace_request(Span(trace_id=TRACE_ID, span_id=ROOT_ID, attributes=[KeyValue(key="k", value=value)])))
    assert decoded.columns["attr_values"] == [[text]]


def test_span_fields_become_one_row_in_column_order() -> None:
    request = trace_request(
        Span(
            trace_id=TRACE_ID,
            span_id=ROOT_ID,
            name="predict",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=1_000,
            end_time_unix_nano=3_500,
            status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
            attributes=[attribute("mlscope.level", string_value="model"), attribute("batch", int_value=8)],
            events=[
                Span.Event(time_unix_nano=2_000, name="exception", attributes=[attribute("exception.type", string_value="ValueError")]),
                Span.Event(time_unix_nano=2_500, name="mark"),
            ],
            links=[Span.Link(trace_id=TRACE_ID, span_id=CHILD_ID, trace_state="k=v", attributes=[attribute("why", string_value="retry")])],
        ),
        resource=[attribute("service.name", string_value="svc"), attribute("host.name", string_value="h1")],
    )

    decoded = decode_traces(request)

    assert list(decoded.columns) == list(SPAN_ROWS.column_names)
    assert (decoded.rows, decoded.rejected, decoded.error_message) == (1, 0, "")
    assert rows(decoded.columns) == [
        {
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "parent_span_id": "",
            "name": "predict",
            "kind": "server",
            "service": "svc",
            "level": "model",
            "start_ns": 1_000,
            "end_ns": 3_500,
            "duration_ns": 2_500,
            "status_code": "error",
            "status_message": "boom",
            "scope_name": "lib",
            "scope_version": "1.2",
            "attr_keys": ["mlscope.level", "batch"],
            "attr_values": ["model", "8"],
            "resource_keys": ["service.name", "host.name"],
            "resource_values": ["svc", "h1"],
            "event_times_ns": [2_000, 2_500],
            "event_names": ["exception", "mark"],
            "event_attrs_json": ['{"exception.type":"ValueError"}', "{}"],
            "links_json": '[{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00f067aa0ba902b7",'
            '"trace_state":"k=v","attributes":{"why":"retry"}}]',
        }
    ]


def test_defaults_for_spans_from_foreign_sdks() -> None:
    # No service.name, no mlscope.level, no kind/status, no end time past its start.
    request = trace_request(
        Span(trace_id=TRACE_ID, span_id=CHILD_ID, parent_span_id=ROOT_ID, start_time_unix_nano=9, end_time_unix_nano=9),
        resource=[],
    )

    (row,) = rows(decode_traces(request).columns)

    assert (row["service"], row["level"], row["kind"], row["status_code"]) == ("unknown_service", "application", "unspecified", "unset")
    assert (row["parent_span_id"], row["duration_ns"], row["links_json"]) == ("b7ad6b7169203331", 0, "[]")


NOW_NS = 1_700_000_000 * 10**9
WINDOW = otlp.time_window(NOW_NS)


@pytest.mark.parametrize("start, end, reason", [
    (otlp.EARLIEST_TIME_NS - 1, otlp.EARLIEST_TIME_NS, "is before 2000-01-01"),
    (0, 0, "is before 2000-01-01"),
    (NOW_NS + otlp.FUTURE_TOLERANCE_NS + 1, NOW_NS + otlp.FUTURE_TOLERANCE_NS + 2, "more than 86400 s in the future"),
])
def test_spans_outside_the_stored_time_window_are_rejected_the_rest_kept(start: int, end: int, reason: str) -> None:
    # Each month is a store partition: a time outside the window would let one request touch
    # hundreds of them (and it is a clock bug, not a moment anyone looks at).
    request = trace_request(
        Span(trace_id=TRACE_ID, span_id=ROOT_ID, start_time_unix_nano=start, end_time_unix_nano=end),
        Span(trace_id=TRACE_ID, span_id=CHILD_ID, start_time_unix_nano=otlp.EARLIEST_TIME_NS,
             end_time_unix_nano=NOW_NS + otlp.FUTURE_TOLERANCE_NS),
    )

    decoded = otlp.decode_traces(request, WINDOW)

    assert (decoded.rows, decoded.rejected, decoded.columns["span_id"]) == (1, 1, [CHILD_ID.hex()])
    assert reason in decoded.error_message


def test_a_span_ending_before_it_starts_is_kept_with_no_duration() -> None:
    # Two clocks (the SDK's wall clock at a span's start, a mapped monotonic one at its end) can
    # disagree by a microsecond on a short call: the span and its children's parent must stay.
    request = trace_request(Span(trace_id=TRACE_ID, span_id=ROOT_ID, start_time_unix_nano=NOW_NS,
                                 end_time_unix_nano=NOW_NS - 1_000))

    decoded = otlp.decode_traces(request, WINDOW)

    assert (decoded.rows, decoded.rejected, decoded.columns["duration_ns"]) == (1, 0, [0])


def test_metric_points_outside_the_stored_time_window_are_rejected_the_rest_kept() -> None:
    request = metrics_request(metrics_pb2.Metric(name="temp", gauge={"data_points": [
        {"time_unix_nano": 5, "as_double": 1.0}, {"time_unix_nano": NOW_NS, "as_double": 2.0},
        {"time_unix_nano": WINDOW[1] + 1, "as_double": 3.0}]}))

    decoded = otlp.decode_metrics(request, WINDOW)

    assert (decoded.rows, decoded.rejected, decoded.columns["value"]) == (1, 2, [2.0])
    assert "outside the stored window" in decoded.error_message


@pytest.mark.parametrize("sent, stored", [("layer", "layer"), ("kernel", "application"), ("", "application")])
def test_the_level_column_holds_the_level_a_span_counts_as(sent: str, stored: str) -> None:
    # SQL over `spans` then groups as the API does; the sent value stays an attribute.
    request = trace_request(Span(trace_id=TRACE_ID, span_id=ROOT_ID, attributes=[attribute("mlscope.level", string_value=sent)]))

    (row,) = rows(decode_traces(request).columns)

    assert (row["level"], row["attr_keys"], row["attr_values"]) == (stored, ["mlscope.level"], [sent])


def test_every_column_gets_one_value_per_span() -> None:
    # Spans with and without events and links, from two resources: no column may lag behind.
    bare = Span(trace_id=TRACE_ID, span_id=ROOT_ID, name="bare")
    full = Span(trace_id=TRACE_ID, span_id=CHILD_ID, parent_span_id=ROOT_ID, name="full",
                events=[Span.Event(time_unix_nano=1, name="e")], links=[Span.Link(trace_id=TRACE_ID, span_id=ROOT_ID)])
    request = trace_request(bare, full)
    request.resource_spans.extend(trace_request(full, bare).resource_spans)

    decoded = decode_traces(request)

    assert decoded.rows == 4
    assert {name: len(values) for name, values in decoded.columns.items()} == dict.fromkeys(SPAN_ROWS.column_names, 4)


def test_invalid_spans_are_rejected_and_counted_the_rest_kept() -> None:
    request = trace_request(
        Span(trace_id=TRACE_ID, span_id=ROOT_ID, name="good"),
        Span(trace_id=TRACE_ID[:8], span_id=ROOT_ID, name="short trace id"),
        Span(trace_id=bytes(16), span_id=ROOT_ID, name="zero trace id"),
        Span(trace_id=TRACE_ID, span_id=bytes(8), name="zero span id"),
        Span(trace_id=TRACE_ID, span_id=b"\x01" * 9, name="long span id"),
        Span(trace_id=TRACE_ID, span_id=CHILD_ID, parent_span_id=b"\x01", name="bad parent"),
    )

    decoded = decode_traces(request)

    assert decoded.columns["name"] == ["good"]
    assert decoded.rejected == 5
    assert decoded.error_message.startswith("5 spans rejected; first: invalid trace_id '0af7651916cd43dd'")


def test_otlp_json_decodes_like_protobuf() -> None:
    # As the OTLP spec writes JSON: lowerCamelCase, hex ids, enums as integers, 64-bit ints as strings.
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "lib", "version": "1.2"},
                        "spans": [
                            {
                                "traceId": TRACE_ID.hex(),
                                "spanId": CHILD_ID.hex(),
                                "parentSpanId": ROOT_ID.hex(),
                                "name": "child",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000001",
                                "endTimeUnixNano": "1700000000000000901",
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {"key": "unknownFieldIgnored", "value": {"stringValue": "x"}, "extra": 1},
                                ],
                                "links": [{"traceId": TRACE_ID.hex(), "spanId": ROOT_ID.hex()}],
                                "status": {"code": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    protobuf_request = trace_request(
        Span(
            trace_id=TRACE_ID,
            span_id=CHILD_ID,
            parent_span_id=ROOT_ID,
            name="child",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=1700000000000000001,
            end_time_unix_nano=1700000000000000901,
            attributes=[attribute("n", int_value=7), attribute("unknownFieldIgnored", string_value="x")],
            links=[Span.Link(trace_id=TRACE_ID, span_id=ROOT_ID)],
            status=Status(code=Status.STATUS_CODE_OK),
        )
    )

    from_json = parse_trace_request(json.dumps(document).encode(), Encoding.JSON)

    assert from_json == protobuf_request
    (row,) = rows(decode_traces(from_json).columns)
    assert (row["span_id"], row["parent_span_id"], row["kind"], row["status_code"]) == (CHILD_ID.hex(), ROOT_ID.hex(), "client", "ok")


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b"\xff\xff\xff", Encoding.PROTOBUF, "not a valid ExportTraceServiceRequest protobuf"),
        (b"{not json", Encoding.JSON, "not valid JSON"),
        (b"[1, 2]", Encoding.JSON, "must be a JSON object"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', Encoding.JSON, "traceId 'zz' is not hexadecimal"),
        (b'{"resourceSpans": 5}', Encoding.JSON, "not a valid ExportTraceServiceRequest"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, encoding: Encoding, reason: str) -> None:
    with pytest.raises(MalformedRequest, match=reason):
        parse_trace_request(body, encoding)


def metrics_request(*metrics: metrics_pb2.Metric) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            {
                "resource": {"attributes": [attribute("service.name", string_value="gpu-agent")]},
                "scope_metrics": [{"scope": {"name": "mlscope.hw"}, "metrics": list(metrics)}],
            }
        ]
    )


def test_every_metric_kind_becomes_rows() -> None:
    attrs = [attribute("gpu", int_value=0)]
    request = metrics_request(
        metrics_pb2.Metric(name="temp", unit="C", gauge={"data_points": [{"time_unix_nano": 10, "as_double": 61.5, "attributes": attrs}]}),
        metrics_pb2.Metric(name="bytes", sum={"data_points": [{"time_unix_nano": 11, "start_time_unix_nano": 1, "as_int": 4096}]}),
        metrics_pb2.Metric(
            name="latency",
            description="step latency",
            histogram={"data_points": [{"time_unix_nano": 12, "count": 3, "sum": 0.6, "explicit_bounds": [0.1, 1.0], "bucket_counts": [1, 2, 0]}]},
        ),
        metrics_pb2.Metric(name="exp", exponential_histogram={"data_points": [{"time_unix_nano": 13, "count": 2, "sum": 5.0}]}),
        metrics_pb2.Metric(name="quantiles", summary={"data_points": [{"time_unix_nano": 14, "count": 4, "sum": 8.0}]}),
    )

    decoded = decode_metrics(request)

    assert list(decoded.columns) == list(METRIC_POINTS.column_names)
    table = [
        (row["name"], row["kind"], row["time_ns"], row["value"], row["count"], row["bucket_bounds"], row["bucket_counts"])
        for row in rows(decoded.columns)
    ]
    assert table == [
        ("temp", "gauge", 10, 61.5, 0, [], []),
        ("bytes", "sum", 11, 4096.0, 0, [], []),
        ("latency", "histogram", 12, 0.6, 3, [0.1, 1.0], [1, 2, 0]),
        ("exp", "exponential_histogram", 13, 5.0, 2, [], []),
        ("quantiles", "summary", 14, 8.0, 4, [], []),
    ]
    first = rows(decoded.columns)[0]
    assert (first["service"], first["unit"], first["attr_keys"], first["attr_values"], first["scope_name"]) == (
        "gpu-agent", "C", ["gpu"], ["0"], "mlscope.hw"
    )
    assert first["series_hash"] == series_hash("gpu-agent", "temp", {"gpu": "0"}, {"service.name": "gpu-agent"})


def test_series_hash_is_stable_and_ignores_attribute_order() -> None:
    one = series_hash("svc", "m", {"a": "1", "b": "2"}, {"service.name": "svc"})
    assert one == series_hash("svc", "m", {"b": "2", "a": "1"}, {"service.name": "svc"})
    assert one != series_hash("svc", "m", {"a": "1", "b": "3"}, {"service.name": "svc"})
    # Pinned: the hash identifies stored series, so it must not change between releases.
    assert one == 3252364848919653499


def test_nameless_metrics_are_rejected_and_counted() -> None:
    request = metrics_request(
        metrics_pb2.Metric(name="", gauge={"data_points": [{"as_int": 1}, {"as_int": 2}]}),
        metrics_pb2.Metric(name="ok", gauge={"data_points": [{"as_int": 3}]}),
    )

    decoded = decode_metrics(request)

    assert (decoded.columns["name"], decoded.rejected) == (["ok"], 2)
    assert decoded.error_message == "2 data points rejected; first: a metric has no name"


def test_metrics_json_with_hex_exemplar_ids() -> None:
    document = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "util",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": "5",
                                            "asDouble": 0.5,
                                            "exemplars": [{"traceId": TRACE_ID.hex(), "spanId": ROOT_ID.hex(), "asDouble": 0.5}],
                                        }
                                    ]
                                },
                            }
                        ]
                    }
                ]
            }
        ]
    }

    request = parse_metrics_request(json.dumps(document).encode(), Encoding.JSON)

    exemplar = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].exemplars[0]
    assert (exemplar.trace_id, exemplar.span_id) == (TRACE_ID, ROOT_ID)
    assert rows(decode_metrics(request).columns)[0]["service"] == "unknown_service"
