"""The decoder under hostile input: every body is either a request or a MalformedRequest (HTTP
400), decoding a parsed request never raises, every span is stored or counted as rejected, and
what a client can put in open enums or new AnyValue kinds reads as the OTLP default. The seeded
mutation fuzzer runs in CI; MLSCOPE_FUZZ_INPUTS raises its count."""

from __future__ import annotations

import base64
import json
import os
import random

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from mlscope.collector.otlp import (
    Encoding,
    MalformedRequest,
    parse_metrics_request,
    parse_trace_request,
)
from tests.collector.test_otlp import (
    CHILD_ID, ROOT_ID, TRACE_ID, attribute, decode_metrics, decode_traces, trace_request,
)

FUZZ_INPUTS = int(os.environ.get("MLSCOPE_FUZZ_INPUTS", "20000"))


def _json_body(*spans: dict) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()


def _json_span(**fields: object) -> dict:
    return {"traceId": TRACE_ID.hex(), "spanId": ROOT_ID.hex(), "name": "ok", **fields}


@pytest.mark.parametrize(("field", "value", "column", "stored"), [
    ("kind", -1, "kind", "unspecified"),
    ("kind", -9, "kind", "unspecified"),
    ("kind", 99, "kind", "unspecified"),
    ("kind", 2, "kind", "server"),
    ("status", {"code": -1}, "status_code", "unset"),
    ("status", {"code": -5}, "status_code", "unset"),
    ("status", {"code": 2}, "status_code", "error"),
])
def test_open_enum_values_out_of_range_read_as_the_default(field: str, value: object, column: str, stored: str) -> None:
    decoded = decode_traces(parse_trace_request(_json_body(_json_span(**{field: value})), Encoding.JSON))
    assert (decoded.rows, decoded.rejected, decoded.columns[column]) == (1, 0, [stored])


def test_an_attribute_kind_the_collector_does_not_store_is_empty_and_the_span_kept() -> None:
    span = _json_span(attributes=[{"key": "interned", "value": {"stringValueStrindex": 3}},
                                  {"key": "list", "value": {"arrayValue": {"values": [{"stringValueStrindex": 1}]}}},
                                  {"key": "kept", "value": {"stringValue": "yes"}}])
    decoded = decode_traces(parse_trace_request(_json_body(span), Encoding.JSON))
    assert decoded.rows == 1
    assert decoded.columns["attr_values"] == [["", "[null]", "yes"]]


@pytest.mark.parametrize("body", [
    b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":' + b'{"arrayValue":{"values":[' * 2_000
    + b"]}}" * 2_000 + b"}]}}]}",
    json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": "not a list"}]}]}).encode(),
    json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [_json_span(startTimeUnixNano=-5)]}]}]}).encode(),
    json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [_json_span(name="\ud800")]}]}]}).encode(),
    b"\xff\xfe not utf-8",
])
def test_hostile_json_is_a_malformed_request(body: bytes) -> None:
    with pytest.raises(MalformedRequest) as raised:
        parse_trace_request(body, Encoding.JSON)
    assert len(str(raised.value)) < 400  # it goes back to the client


def test_deeply_nested_protobuf_is_a_malformed_request() -> None:
    # An AnyValue nested far past protobuf's recursion limit, written by hand in wire format:
    # field 5 (array_value) of AnyValue -> field 1 (values) of ArrayValue -> AnyValue ...
    nested = b""
    for _ in range(300):
        array = b"\x0a" + _varint(len(nested)) + nested
        nested = b"\x2a" + _varint(len(array)) + array
    request = trace_request(Span(trace_id=TRACE_ID, span_id=ROOT_ID, name="deep")).SerializeToString()
    with pytest.raises(MalformedRequest):
        parse_trace_request(request + _resource_attribute(nested), Encoding.PROTOBUF)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _resource_attribute(any_value: bytes) -> bytes:
    """An extra ResourceSpans whose resource has one attribute holding `any_value`."""
    key_value = b"\x0a\x01k" + b"\x12" + _varint(len(any_value)) + any_value
    resource = b"\x0a" + _varint(len(key_value)) + key_value
    resource_spans = b"\x0a" + _varint(len(resource)) + resource
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


def _valid_requests() -> list[ExportTraceServiceRequest]:
    root = Span(trace_id=TRACE_ID, span_id=ROOT_ID, name="root", kind=2, start_time_unix_nano=1, end_time_unix_nano=9,
                status=Status(code=2, message="bad"), attributes=[attribute("mlscope.level", string_value="model"),
                                                                  attribute("n", int_value=3)])
    child = Span(trace_id=TRACE_ID, span_id=CHILD_ID, parent_span_id=ROOT_ID, name="child",
                 events=[Span.Event(time_unix_nano=5, name="e", attributes=[attribute("x", double_value=1.5)])],
                 links=[Span.Link(trace_id=TRACE_ID, span_id=ROOT_ID)])
    return [trace_request(root, child), trace_request(Span(trace_id=b"short", span_id=ROOT_ID, name="bad"), child)]


def _mutate(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        at = rng.randrange(len(data) + 1)
        if choice < 0.4 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.6:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice < 0.8 and data:
            del data[at:at + rng.randint(1, 8)]
        else:
            data[at:at] = data[rng.randrange(len(data) or 1):][: rng.randint(1, 32)]
    return bytes(data)


def _otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping, but ids in hex."""
    document = json_format.MessageToDict(request)

    def hex_ids(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hex_ids(value)
        elif isinstance(node, list):
            for item in node:
                hex_ids(item)

    hex_ids(document)
    return json.dumps(document).encode()


_ODD_VALUES: tuple[object, ...] = (-1, -2**31, 2**31, 2**64, -2**63, 1e308, "", "x" * 300, "ffff", [], {}, None, True,
                                   [[[[]]]], {"stringValueStrindex": 1}, {"arrayValue": {"values": [{}]}}, "\ud800")


def _mutate_json(node: object, rng: random.Random) -> object:
    """`node` with one value somewhere replaced by an odd one (a wrong type, a number out of
    range, an empty or huge value), or a key dropped."""
    if isinstance(node, dict) and node:
        key = rng.choice(sorted(node))
        if rng.random() < 0.15:
            return {k: v for k, v in node.items() if k != key}
        child = node[key]
        node[key] = _mutate_json(child, rng) if isinstance(child, (dict, list)) and rng.random() < 0.7 else rng.choice(_ODD_VALUES)
        return node
    if isinstance(node, list) and node:
        at = rng.randrange(len(node))
        node[at] = _mutate_json(node[at], rng) if rng.random() < 0.8 else rng.choice(_ODD_VALUES)
        return node
    return rng.choice(_ODD_VALUES)


def _count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


@pytest.mark.parametrize("encoding", [Encoding.PROTOBUF, Encoding.JSON])
def test_mutated_requests_never_raise_out_of_the_decoder(encoding: Encoding) -> None:
    """Seeded: the same inputs every run. Each input is refused as malformed or decoded with
    every span stored or rejected; traces and metrics decoders both see every input."""
    rng = random.Random(9)
    if encoding is Encoding.PROTOBUF:
        seeds = [request.SerializeToString() for request in _valid_requests()]
    else:
        seeds = [_otlp_json(request) for request in _valid_requests()]
    parsed = malformed = 0
    for index in range(FUZZ_INPUTS // 2):
        seed = rng.choice(seeds)
        if encoding is Encoding.JSON and index % 2:
            body = json.dumps(_mutate_json(json.loads(seed), rng)).encode()
        else:
            body = _mutate(seed, rng)
        try:
            request = parse_trace_request(body, encoding)
        except MalformedRequest:
            malformed += 1
        else:
            parsed += 1
            decoded = decode_traces(request)
            assert decoded.rows + decoded.rejected == _count_spans(request)
            assert {len(values) for values in decoded.columns.values()} == {decoded.rows}
        try:
            decode_metrics(parse_metrics_request(body, encoding))
        except MalformedRequest:
            pass
    print(f"{encoding.name}: {FUZZ_INPUTS // 2} inputs, {parsed} parsed, {malformed} malformed")
    assert parsed and malformed  # the mutations reach both outcomes
