"""OTLP in, store columns out: pure conversions with no I/O.

`parse_*_request` turns a request body (OTLP protobuf or OTLP/JSON) into the protobuf message;
`decode_traces` / `decode_metrics` turn that message into the columns of the store's
`SPAN_ROWS` / `METRIC_POINTS` tables (store/model.py declares them). JSON goes through the same
message, so there is one decode path. `decode_traces` is the collector's hot path: it walks every
span once, binds each column's list to a local by column name once per request, and shares one
resource's key/value lists between its spans.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
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

from mlscope.conventions import EVALUATION_SPAN, LEVEL, SERVICE_NAME, stored_level
from mlscope.store.model import METRIC_POINTS, SPAN_ROWS, Columns

SPAN_TABLE = SPAN_ROWS.name
METRIC_TABLE = METRIC_POINTS.name
UNKNOWN_SERVICE = "unknown_service"

# By the OTLP enum values (Span.SpanKind, Status.StatusCode). Protobuf enums are open, so a client
# can send any int32: a value outside these reads as the enum's zero value.
_SPAN_KINDS = dict(enumerate(("unspecified", "internal", "server", "client", "producer", "consumer")))
_STATUS_CODES = dict(enumerate(("unset", "ok", "error")))
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
    first_problem: str  # why the first rejected span or point was ("" when none was)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        noun = "span" if self.table == SPAN_TABLE else "data point"
        return f"{self.rejected} {noun}{'s' if self.rejected != 1 else ''} rejected; first: {self.first_problem}"


# --- request bodies -> messages ---------------------------------------------------------------


def parse_trace_request(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    return _parse(body, encoding, ExportTraceServiceRequest())


def parse_metrics_request(body: bytes, encoding: Encoding) -> ExportMetricsServiceRequest:
    return _parse(body, encoding, ExportMetricsServiceRequest())


def _parse(body: bytes, encoding: Encoding, message: RequestT) -> RequestT:
    """The request in `body`; MalformedRequest for anything else, whatever the client sent (a
    nesting deep enough to exhaust the recursion limit included)."""
    if encoding is Encoding.PROTOBUF:
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise MalformedRequest(f"body is not a valid {message.DESCRIPTOR.name} protobuf: {exc}") from exc
        return message
    try:
        document = json.loads(body)
        # A `\ud800` escape gives a lone surrogate, which no UTF-8 text (nor protobuf) can hold.
        json.dumps(document, ensure_ascii=False).encode()
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise MalformedRequest(f"body is not valid JSON: {_bounded(exc)}") from exc
    if not isinstance(document, dict):
        raise MalformedRequest(f"body must be a JSON object ({message.DESCRIPTOR.name})")
    try:
        _hex_ids_to_base64(document)
        return json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedRequest(f"body is not a valid {message.DESCRIPTOR.name}: {_bounded(exc)}") from exc


def _bounded(exc: BaseException, limit: int = 200) -> str:
    """An error's text cut to `limit` characters: it goes back to the client and into logs."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


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
    text_of = _TEXT_OF.get(value.WhichOneof("value"))  # None: unset, or a kind this collector does not store
    return text_of(value) if text_of else ""


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
    if kind in _JSON_SCALARS:
        return getattr(value, kind)
    return None


_JSON_SCALARS = frozenset(("string_value", "int_value", "double_value", "bool_value"))


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
        return resource_values[resource_keys.index(SERVICE_NAME)] or UNKNOWN_SERVICE
    except ValueError:
        return UNKNOWN_SERVICE


# --- traces -----------------------------------------------------------------------------------

EARLIEST_TIME_NS = 946_684_800 * 10**9  # 2000-01-01 UTC
FUTURE_TOLERANCE_NS = 86_400 * 10**9  # one day of clock skew


def time_window(now_ns: int | None = None) -> tuple[int, int]:
    """The (earliest, latest) start time in ns the collector stores, inclusive. Each month is a
    store partition: bounding the times bounds how many partitions one request can touch, and a
    time outside it is a clock or encoding bug, not a moment anyone will look at."""
    return EARLIEST_TIME_NS, (time.time_ns() if now_ns is None else now_ns) + FUTURE_TOLERANCE_NS



def _span_problem(trace_id: bytes, span_id: bytes, parent_span_id: bytes) -> str | None:
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        return f"invalid trace_id {trace_id.hex()!r} (must be 16 bytes, not all zero)"
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        return f"invalid span_id {span_id.hex()!r} (must be 8 bytes, not all zero)"
    if parent_span_id and len(parent_span_id) != 8:
        return f"invalid parent_span_id {parent_span_id.hex()!r} (must be empty or 8 bytes)"
    return None


def _time_problem(start: int) -> str:
    if start < EARLIEST_TIME_NS:
        return f"start time {start} ns is before {time.strftime('%Y-%m-%d', time.gmtime(EARLIEST_TIME_NS // 10**9))}"
    return f"start time {start} ns is more than {FUTURE_TOLERANCE_NS // 10**9} s in the future"


def decode_traces(request: ExportTraceServiceRequest, window: tuple[int, int] | None = None) -> Decoded:
    """Span rows for every valid span; invalid ones are counted (with the first reason) for the
    response's partial_success, and the rest of the request is kept. A span must start inside
    `window` (earliest, latest ns; default: `time_window()`). A span that ends before it starts
    (clocks of two sources, a clock stepped back) is kept with a duration of 0: its time is
    wrong, but refusing it would lose its children's parent.

    The `level` column holds the level the span counts as (conventions.stored_level), so that SQL
    over `spans` groups exactly as the API does; the value the sender wrote stays among the
    span's attributes."""
    columns = SPAN_ROWS.empty_columns()
    # Each column's list bound to a local once, by name: the loop below runs once per span, and
    # `values.append(x)` on a local list is the cheapest append Python has.
    trace_ids, span_ids, parent_span_ids = columns["trace_id"], columns["span_id"], columns["parent_span_id"]
    names, kinds, services, levels = columns["name"], columns["kind"], columns["service"], columns["level"]
    starts, ends, durations = columns["start_ns"], columns["end_ns"], columns["duration_ns"]
    status_codes, status_messages = columns["status_code"], columns["status_message"]
    scope_names, scope_versions = columns["scope_name"], columns["scope_version"]
    attr_key_lists, attr_value_lists = columns["attr_keys"], columns["attr_values"]
    resource_key_lists, resource_value_lists = columns["resource_keys"], columns["resource_values"]
    event_time_lists, event_name_lists = columns["event_times_ns"], columns["event_names"]
    event_attr_lists, links = columns["event_attrs_json"], columns["links_json"]
    earliest, latest = window or time_window()
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
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if not earliest <= start <= latest:
                    rejected += 1
                    first_problem = first_problem or _time_problem(start)
                    continue
                attr_keys, attr_values = _attributes(span.attributes)
                status = span.status
                trace_ids.append(trace_id.hex())
                span_ids.append(span_id.hex())
                # An all-zero parent is how some SDKs write "no parent".
                parent_span_ids.append(
                    parent_span_id.hex() if parent_span_id and parent_span_id != _ZERO_SPAN_ID else "")
                names.append(span.name)
                kinds.append(_SPAN_KINDS.get(span.kind, "unspecified"))
                services.append(service)
                levels.append(stored_level(attr_values[attr_keys.index(LEVEL)] if LEVEL in attr_keys else None))
                starts.append(start)
                ends.append(end)
                durations.append(end - start if end > start else 0)
                status_codes.append(_STATUS_CODES.get(status.code, "unset"))
                status_messages.append(status.message)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                attr_key_lists.append(attr_keys)
                attr_value_lists.append(attr_values)
                # Shared by every span of the resource: nothing mutates these lists.
                resource_key_lists.append(resource_keys)
                resource_value_lists.append(resource_values)
                events = span.events
                if events:
                    event_time_lists.append([event.time_unix_nano for event in events])
                    event_name_lists.append([event.name for event in events])
                    event_attr_lists.append([_compact_json(_attributes_json(event.attributes)) for event in events])
                else:
                    event_time_lists.append([])
                    event_name_lists.append([])
                    event_attr_lists.append([])
                links.append(_links_json(span.links) if span.links else "[]")
    return Decoded(SPAN_TABLE, columns, len(trace_ids), rejected, first_problem)


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


# --- metrics ----------------------------------------------------------------------------------


def series_hash(service: str, name: str, attributes: dict[str, str], resource: dict[str, str]) -> int:
    """A stable 64-bit id of one time series: the same service, metric name and attribute sets
    (in any order) give the same hash in every process and release."""
    identity = _compact_json([service, name, sorted(attributes.items()), sorted(resource.items())])
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "little")


def decode_metrics(request: ExportMetricsServiceRequest, window: tuple[int, int] | None = None) -> Decoded:
    """One row per data point. Gauge and sum points keep their value; histogram, exponential
    histogram and summary points keep sum and count (explicit histograms also their buckets).
    Points of a metric without a name are rejected: a nameless series cannot be queried; so are
    points whose time is outside `window` (default: `time_window()`)."""
    columns = METRIC_POINTS.empty_columns()
    earliest, latest = window or time_window()
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
                    if not earliest <= point.time_unix_nano <= latest:
                        rejected += 1
                        first_problem = first_problem or f"data point time {point.time_unix_nano} ns is outside " \
                            f"the stored window [{earliest}, {latest}] ns"
                        continue
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
    return Decoded(METRIC_TABLE, columns, rows, rejected, first_problem)


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


# --- evaluation rows: the predictor scope's -----------------------------------------------------

EVALUATION_NEEDS_SCOPE = f"a {EVALUATION_SPAN} span needs a token with the predictor or admin scope"


def decode_request(signal: Signal, request: Message, may_write_evaluations: bool) -> tuple[Decoded, bool]:
    """`signal.decode(request)`, and whether `request` was changed. For a sender who may not write
    evaluation rows (with --auth, a token without `predictor` or `admin`), a trace request's
    `mlscope.evaluation` spans, which the store turns into `evaluations` rows, are removed from
    `request` (so that a spooled copy holds none either) and counted in partial_success; the rest
    of the request is kept. Costs one scan of the decoded names when there is none."""
    decoded = signal.decode(request)
    if may_write_evaluations or signal is not TRACES or EVALUATION_SPAN not in decoded.columns["name"]:
        return decoded, False
    removed = 0
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            for index in reversed(range(len(spans))):
                if spans[index].name == EVALUATION_SPAN:
                    del spans[index]
                    removed += 1
    decoded = signal.decode(request)
    return replace(decoded, rejected=decoded.rejected + removed,
                   first_problem=decoded.first_problem or EVALUATION_NEEDS_SCOPE), True


def decode_body(signal: Signal, body: bytes, encoding: Encoding, may_write_evaluations: bool) -> tuple[Decoded, bytes]:
    """A request body's rows (decode_request) and the request as OTLP protobuf for the spool
    (the body itself when it is protobuf and nothing was refused from it). MalformedRequest for
    a body that is not the signal's request."""
    message = signal.parse(body, encoding)
    decoded, changed = decode_request(signal, message, may_write_evaluations)
    return decoded, body if encoding is Encoding.PROTOBUF and not changed else message.SerializeToString()
