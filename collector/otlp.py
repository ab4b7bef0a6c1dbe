"""OTLP in, store columns out: pure conversions with no I/O.

`parse_*_request` turns a request body (OTLP protobuf or OTLP/JSON) into the protobuf message;
`decode_traces` / `decode_metrics` turn that message into the column lists of
`store.model.SPAN_COLUMNS` / `METRIC_COLUMNS`. JSON goes through the same message, so there is
one decode path. `decode_traces` is the collector's hot path: it walks every span once, binds the
column appends to locals and shares one resource's key/value lists between its spans.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from mlscope.conventions import DEFAULT_LEVEL, LEVEL
from mlscope.store.model import Columns, empty_columns

SPAN_TABLE = "span_rows"
METRIC_TABLE = "metric_points"
UNKNOWN_SERVICE = "unknown_service"

# Indexed by the OTLP enum values (Span.SpanKind, Status.StatusCode).
_SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS_CODES = ("unset", "ok", "error")
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
# OTLP/JSON writes these bytes fields as hex where protobuf's JSON mapping expects base64.
_HEX_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId"))

RequestT = TypeVar("RequestT", bound=Message)


class Encoding(Enum):
    """The two OTLP/HTTP body encodings, by their Content-Type."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


class MalformedRequest(ValueError):
    """The body is not a valid OTLP request; the message says why (it goes back to the client)."""


@dataclass(frozen=True)
class Decoded:
    """One request's rows for `table`, and what partial_success must report."""

    table: str
    columns: Columns
    rows: int
    rejected: int
    error_message: str


# --- request bodies -> messages ---------------------------------------------------------------


def parse_trace_request(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    return _parse(body, encoding, ExportTraceServiceRequest())


def parse_metrics_request(body: bytes, encoding: Encoding) -> ExportMetricsServiceRequest:
    return _parse(body, encoding, ExportMetricsServiceRequest())


def _parse(body: bytes, encoding: Encoding, message: RequestT) -> RequestT:
    if encoding is Encoding.PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise MalformedRequest(f"body is not a valid {message.DESCRIPTOR.name} protobuf: {exc}") from exc
        return message
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedRequest(f"body must be a JSON object ({message.DESCRIPTOR.name})")
    _hex_ids_to_base64(document)
    try:
        return json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise MalformedRequest(f"body is not a valid {message.DESCRIPTOR.name}: {exc}") from exc


def _hex_ids_to_base64(node: Any) -> None:
    """Rewrites OTLP/JSON's hex trace/span ids (spans, links, exemplars) in place as the base64
    that protobuf's JSON parser reads for bytes fields."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError as exc:
                    raise MalformedRequest(f"{key} {value[:64]!r} is not hexadecimal") from exc
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


# --- attribute values -> text -----------------------------------------------------------------


def any_value_text(value: AnyValue) -> str:
    """An attribute value as the string the store keeps (model.py: attribute values are strings):
    scalars in their usual text form, arrays and key/value lists as compact JSON."""
    kind = value.WhichOneof("value")
    return _TEXT_OF[kind](value) if kind else ""


_TEXT_OF = {
    "string_value": lambda value: value.string_value,
    "int_value": lambda value: str(value.int_value),
    "double_value": lambda value: repr(value.double_value),
    "bool_value": lambda value: "true" if value.bool_value else "false",
    "bytes_value": lambda value: value.bytes_value.hex(),
    "array_value": lambda value: _compact_json(_any_value_json(value)),
    "kvlist_value": lambda value: _compact_json(_any_value_json(value)),
}


def _any_value_json(value: AnyValue) -> Any:
    """An AnyValue as the JSON value inside an array or key/value list."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value_json(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value_json(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind is None:
        return None
    return getattr(value, kind)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _attributes(key_values: Iterable[KeyValue]) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    values: list[str] = []
    for kv in key_values:
        keys.append(kv.key)
        value = kv.value
        # Most values are strings, and HasField is much cheaper than WhichOneof's dispatch.
        values.append(value.string_value if value.HasField("string_value") else any_value_text(value))
    return keys, values


def _attributes_json(key_values: Iterable[KeyValue]) -> dict[str, str]:
    return {kv.key: any_value_text(kv.value) for kv in key_values}


def _service(resource_keys: list[str], resource_values: list[str]) -> str:
    try:
        return resource_values[resource_keys.index("service.name")] or UNKNOWN_SERVICE
    except ValueError:
        return UNKNOWN_SERVICE


# --- traces -----------------------------------------------------------------------------------


def _span_problem(trace_id: bytes, span_id: bytes, parent_span_id: bytes) -> str | None:
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        return f"invalid trace_id {trace_id.hex()!r} (must be 16 bytes, not all zero)"
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        return f"invalid span_id {span_id.hex()!r} (must be 8 bytes, not all zero)"
    if parent_span_id and len(parent_span_id) != 8:
        return f"invalid parent_span_id {parent_span_id.hex()!r} (must be empty or 8 bytes)"
    return None


def decode_traces(request: ExportTraceServiceRequest) -> Decoded:
    """Span rows for every valid span; invalid ones are counted (with the first reason) for the
    response's partial_success, and the rest of the request is kept."""
    columns = empty_columns(SPAN_TABLE)
    # One bound append per column: this loop runs once per span.
    (
        add_trace_id, add_span_id, add_parent, add_name, add_kind, add_service, add_level,
        add_start, add_end, add_duration, add_status_code, add_status_message, add_scope_name,
        add_scope_version, add_attr_keys, add_attr_values, add_resource_keys, add_resource_values,
        add_event_times, add_event_names, add_event_attrs, add_links,
    ) = [column.append for column in columns.values()]
    rejected = 0
    first_problem = ""
    for resource_spans in request.resource_spans:
        resource_keys, resource_values = _attributes(resource_spans.resource.attributes)
        service = _service(resource_keys, resource_values)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_name, scope_version = scope.name, scope.version
            for span in scope_spans.spans:
                trace_id, span_id, parent_span_id = span.trace_id, span.span_id, span.parent_span_id
                problem = _span_problem(trace_id, span_id, parent_span_id)
                if problem is not None:
                    rejected += 1
                    first_problem = first_problem or problem
                    continue
                attr_keys, attr_values = _attributes(span.attributes)
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                status = span.status
                add_trace_id(trace_id.hex())
                add_span_id(span_id.hex())
                # An all-zero parent is how some SDKs write "no parent".
                add_parent(parent_span_id.hex() if parent_span_id and parent_span_id != _ZERO_SPAN_ID else "")
                add_name(span.name)
                add_kind(_SPAN_KINDS[span.kind] if span.kind < len(_SPAN_KINDS) else "unspecified")
                add_service(service)
                add_level(attr_values[attr_keys.index(LEVEL)] if LEVEL in attr_keys else DEFAULT_LEVEL)
                add_start(start)
                add_end(end)
                add_duration(end - start if end > start else 0)
                add_status_code(_STATUS_CODES[status.code] if status.code < len(_STATUS_CODES) else "unset")
                add_status_message(status.message)
                add_scope_name(scope_name)
                add_scope_version(scope_version)
                add_attr_keys(attr_keys)
                add_attr_values(attr_values)
                # Shared by every span of the resource: nothing mutates these lists.
                add_resource_keys(resource_keys)
                add_resource_values(resource_values)
                events = span.events
                if events:
                    add_event_times([event.time_unix_nano for event in events])
                    add_event_names([event.name for event in events])
                    add_event_attrs([_compact_json(_attributes_json(event.attributes)) for event in events])
                else:
                    add_event_times([])
                    add_event_names([])
                    add_event_attrs([])
                add_links(_links_json(span.links) if span.links else "[]")
    rows = len(columns["trace_id"])
    return Decoded(SPAN_TABLE, columns, rows, rejected, _partial_message(rejected, "span", first_problem))


def _links_json(links: Iterable[Any]) -> str:
    return _compact_json(
        [
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "trace_state": link.trace_state,
                "attributes": _attributes_json(link.attributes),
            }
            for link in links
        ]
    )


def _partial_message(rejected: int, noun: str, first_problem: str) -> str:
    if not rejected:
        return ""
    return f"{rejected} {noun}{'s' if rejected != 1 else ''} rejected; first: {first_problem}"


# --- metrics ----------------------------------------------------------------------------------


def series_hash(service: str, name: str, attributes: dict[str, str], resource: dict[str, str]) -> int:
    """A stable 64-bit id of one time series: the same service, metric name and attribute sets
    (in any order) give the same hash in every process and release."""
    identity = _compact_json([service, name, sorted(attributes.items()), sorted(resource.items())])
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "little")


def decode_metrics(request: ExportMetricsServiceRequest) -> Decoded:
    """One row per data point. Gauge and sum points keep their value; histogram, exponential
    histogram and summary points keep sum and count (explicit histograms also their buckets).
    Points of a metric without a name are rejected: a nameless series cannot be queried."""
    columns = empty_columns(METRIC_TABLE)
    rejected = 0
    first_problem = ""
    for resource_metrics in request.resource_metrics:
        resource_keys, resource_values = _attributes(resource_metrics.resource.attributes)
        resource = dict(zip(resource_keys, resource_values))
        service = _service(resource_keys, resource_values)
        for scope_metrics in resource_metrics.scope_metrics:
            scope_name = scope_metrics.scope.name
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind else ()
                if not metric.name:
                    rejected += len(points)
                    first_problem = first_problem or "a metric has no name"
                    continue
                for point in points:
                    attr_keys, attr_values = _attributes(point.attributes)
                    value, count, bounds, counts = _point_values(kind, point)
                    row = {
                        "service": service,
                        "name": metric.name,
                        "description": metric.description,
                        "unit": metric.unit,
                        "kind": kind,
                        "time_ns": point.time_unix_nano,
                        "start_time_ns": point.start_time_unix_nano,
                        "value": value,
                        "count": count,
                        "bucket_bounds": bounds,
                        "bucket_counts": counts,
                        "attr_keys": attr_keys,
                        "attr_values": attr_values,
                        "resource_keys": resource_keys,
                        "resource_values": resource_values,
                        "scope_name": scope_name,
                        "series_hash": series_hash(service, metric.name, dict(zip(attr_keys, attr_values)), resource),
                    }
                    for column, cell in row.items():
                        columns[column].append(cell)
    rows = len(columns["time_ns"])
    return Decoded(METRIC_TABLE, columns, rows, rejected, _partial_message(rejected, "data point", first_problem))


def _point_values(kind: str, point: Any) -> tuple[float, int, list[float], list[int]]:
    """(value, count, bucket bounds, bucket counts) of one data point of metric kind `kind`."""
    if kind in ("gauge", "sum"):
        number = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
        return float(number), 0, [], []
    total = point.sum if kind == "summary" or point.HasField("sum") else 0.0
    if kind == "histogram":
        return total, point.count, list(point.explicit_bounds), list(point.bucket_counts)
    return total, point.count, [], []


# --- responses and the two signals ------------------------------------------------------------


def trace_response(decoded: Decoded) -> ExportTraceServiceResponse:
    if not decoded.rejected:
        return ExportTraceServiceResponse()
    return ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=decoded.rejected, error_message=decoded.error_message)
    )


def metrics_response(decoded: Decoded) -> ExportMetricsServiceResponse:
    if not decoded.rejected:
        return ExportMetricsServiceResponse()
    return ExportMetricsServiceResponse(
        partial_success=ExportMetricsPartialSuccess(
            rejected_data_points=decoded.rejected, error_message=decoded.error_message
        )
    )


@dataclass(frozen=True)
class Signal:
    """What differs between traces and metrics, so that HTTP, gRPC and spool replay share one path.
    `name` is the OTLP/HTTP path tail (/v1/<name>) and tags spooled requests."""

    name: str
    parse: Callable[[bytes, Encoding], Message]
    decode: Callable[[Any], Decoded]
    response: Callable[[Decoded], Message]


TRACES = Signal("traces", parse_trace_request, decode_traces, trace_response)
METRICS = Signal("metrics", parse_metrics_request, decode_metrics, metrics_response)
SIGNALS: dict[str, Signal] = {signal.name: signal for signal in (TRACES, METRICS)}
