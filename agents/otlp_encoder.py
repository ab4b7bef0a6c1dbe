"""Finished spans as an OTLP `ExportTraceServiceRequest`, written straight in protobuf wire format.

The SDK's encoder (opentelemetry.exporter.otlp.proto.common.trace_encoder) builds a protobuf
object per span, attribute and value, hashes the Resource (a json.dumps) once per span, and only
then serializes: milliseconds of GIL-holding CPU per ResNet-18 call at library level in the
exporter's thread (docs/PERFORMANCE.md). This module writes the same message's bytes directly: the
Resource and scope are encoded once and cached, as are the key/value pairs with string (or
tuple of strings) values that repeat from call to call (level, module path and type, tensor
shapes); the rest is a list of bytes joined once per span. bench/otlp_encode.py measures both
(docs/PERFORMANCE.md).

The output parses to the message the SDK's encoder builds for the same spans (same grouping by
resource and scope in order of first appearance, same fields; see tests/agents/test_otlp_encoder.py),
so the collector cannot tell them apart. Like the SDK, it leaves out a link's trace_state and puts
only the "has is_remote"/"is remote" bits in the flags.

Tags are `field number << 3 | wire type`; each constant cites the .proto field it encodes
(opentelemetry-proto v1: collector/trace/v1/trace_service.proto, trace/v1/trace.proto,
common/v1/common.proto, resource/v1/resource.proto).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from mlscope.protowire import UINT64_MASK as _UINT64_MASK
from mlscope.protowire import varint as _varint  # varints: one encoder, shared with query/perfetto.py

log = logging.getLogger(__name__)

# --- wire format --------------------------------------------------------------------------------

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    return _length_delimited(tag, text.encode())


# ExportTraceServiceRequest
_REQUEST_RESOURCE_SPANS = b"\x0a"  # repeated ResourceSpans resource_spans = 1
# ResourceSpans
_RESOURCE_SPANS_RESOURCE = b"\x0a"  # Resource resource = 1
_RESOURCE_SPANS_SCOPE_SPANS = b"\x12"  # repeated ScopeSpans scope_spans = 2
_RESOURCE_SPANS_SCHEMA_URL = b"\x1a"  # string schema_url = 3
# Resource
_RESOURCE_ATTRIBUTES = b"\x0a"  # repeated KeyValue attributes = 1
# ScopeSpans
_SCOPE_SPANS_SCOPE = b"\x0a"  # InstrumentationScope scope = 1
_SCOPE_SPANS_SPANS = b"\x12"  # repeated Span spans = 2
_SCOPE_SPANS_SCHEMA_URL = b"\x1a"  # string schema_url = 3
# InstrumentationScope
_SCOPE_NAME = b"\x0a"  # string name = 1
_SCOPE_VERSION = b"\x12"  # string version = 2
_SCOPE_ATTRIBUTES = b"\x1a"  # repeated KeyValue attributes = 3
# Span
_SPAN_TRACE_ID = b"\x0a\x10"  # bytes trace_id = 1, always 16 bytes
_SPAN_SPAN_ID = b"\x12\x08"  # bytes span_id = 2, always 8 bytes
_SPAN_TRACE_STATE = b"\x1a"  # string trace_state = 3
_SPAN_PARENT_SPAN_ID = b"\x22\x08"  # bytes parent_span_id = 4, 8 bytes when there is a parent
_SPAN_NAME = b"\x2a"  # string name = 5
_SPAN_START = b"\x39"  # fixed64 start_time_unix_nano = 7
_SPAN_END = b"\x41"  # fixed64 end_time_unix_nano = 8
_SPAN_ATTRIBUTES = b"\x4a"  # repeated KeyValue attributes = 9
_SPAN_DROPPED_ATTRIBUTES = b"\x50"  # uint32 dropped_attributes_count = 10
_SPAN_EVENTS = b"\x5a"  # repeated Event events = 11
_SPAN_DROPPED_EVENTS = b"\x60"  # uint32 dropped_events_count = 12
_SPAN_LINKS = b"\x6a"  # repeated Link links = 13
_SPAN_DROPPED_LINKS = b"\x70"  # uint32 dropped_links_count = 14
_SPAN_STATUS = b"\x7a"  # Status status = 15
_SPAN_FLAGS = b"\x85\x01"  # fixed32 flags = 16 (a two-byte tag: 16 << 3 | 5 = 133)
# SpanKind kind = 6: OTLP's enum is the API's SpanKind shifted by one (0 is UNSPECIFIED).
_SPAN_KIND = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}
# Span.Event
_EVENT_TIME = b"\x09"  # fixed64 time_unix_nano = 1
_EVENT_NAME = b"\x12"  # string name = 2
_EVENT_ATTRIBUTES = b"\x1a"  # repeated KeyValue attributes = 3
_EVENT_DROPPED_ATTRIBUTES = b"\x20"  # uint32 dropped_attributes_count = 4
# Span.Link
_LINK_TRACE_ID = b"\x0a\x10"  # bytes trace_id = 1
_LINK_SPAN_ID = b"\x12\x08"  # bytes span_id = 2
_LINK_ATTRIBUTES = b"\x22"  # repeated KeyValue attributes = 4
_LINK_DROPPED_ATTRIBUTES = b"\x28"  # uint32 dropped_attributes_count = 5
_LINK_FLAGS = b"\x35"  # fixed32 flags = 6
# Status
_STATUS_MESSAGE = b"\x12"  # string message = 2
_STATUS_CODE = b"\x18"  # StatusCode code = 3 (same values as the API's StatusCode)
_UNSET_STATUS = _SPAN_STATUS + b"\x00"  # present but empty, as the SDK writes it
# KeyValue
_KEY_VALUE_KEY = b"\x0a"  # string key = 1
_KEY_VALUE_VALUE = b"\x12"  # AnyValue value = 2
# AnyValue (a oneof: a value equal to its type's default is still written)
_ANY_STRING = b"\x0a"  # string string_value = 1
_ANY_TRUE = b"\x10\x01"  # bool bool_value = 2
_ANY_FALSE = b"\x10\x00"
_ANY_INT = b"\x18"  # int64 int_value = 3
_ANY_DOUBLE = b"\x21"  # double double_value = 4
_ANY_ARRAY = b"\x2a"  # ArrayValue array_value = 5
_ANY_KVLIST = b"\x32"  # KeyValueList kvlist_value = 6
_ANY_BYTES = b"\x3a"  # bytes bytes_value = 7
# ArrayValue / KeyValueList
_LIST_VALUES = b"\x0a"  # repeated AnyValue / KeyValue values = 1

# SpanFlags: the SDK sets SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100) always, and
# SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK (0x200) when the parent (or linked) context is remote.
_LOCAL_FLAGS = (0x100).to_bytes(4, "little")
_REMOTE_FLAGS = (0x300).to_bytes(4, "little")

_pack_double = struct.Struct("<d").pack

# --- attributes ---------------------------------------------------------------------------------

def _int(value: int) -> bytes:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{value} does not fit an int64")
    return _ANY_INT + _varint(value & _UINT64_MASK)  # two's complement, as protobuf's int64


def _array(values: Sequence[Any]) -> bytes:
    return _length_delimited(_ANY_ARRAY, b"".join([_length_delimited(_LIST_VALUES, _any_value(item)) for item in values]))


def _kvlist(pairs: Mapping[Any, Any]) -> bytes:
    return _length_delimited(_ANY_KVLIST, b"".join([_LIST_VALUES + _key_value(str(key), item) for key, item in pairs.items()]))


# The AnyValue message of an attribute value by its type, in the order the SDK's _encode_value
# tests them (bool before int; str and bytes before Sequence).
_ANY_VALUE_ENCODERS: tuple[tuple[type, Callable[[Any], bytes]], ...] = (
    (type(None), lambda value: b""),
    (bool, lambda value: _ANY_TRUE if value else _ANY_FALSE),
    (str, lambda value: _text(_ANY_STRING, value)),
    (int, _int),
    (float, lambda value: _ANY_DOUBLE + _pack_double(value)),
    (bytes, lambda value: _length_delimited(_ANY_BYTES, value)),
    (Sequence, _array),
    (Mapping, _kvlist),
)
# The common exact types skip the isinstance tests (those against the ABCs are slow).
_ANY_VALUE_BY_TYPE: dict[type, Callable[[Any], bytes]] = {
    **{kind: encode for kind, encode in _ANY_VALUE_ENCODERS if kind not in (Sequence, Mapping)},
    tuple: _array,
    list: _array,
    dict: _kvlist,
}


def _any_value(value: Any) -> bytes:
    encode = _ANY_VALUE_BY_TYPE.get(type(value))
    if encode is not None:
        return encode(value)
    for kind, encode in _ANY_VALUE_ENCODERS:
        if isinstance(value, kind):
            return encode(value)
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


_PAIR_CACHE_SIZE = 8192
_text_pairs: dict[tuple[str, str | tuple[str, ...]], bytes] = {}
"""Length-prefixed KeyValue bytes of pairs whose value is a string or a tuple of strings (the
level, module path and type, tensor shapes): spans of a model repeat the same pairs on every
call. Emptied when full rather than evicting one at a time."""


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message, prefixed with its length (the caller writes the field's tag)."""
    # Only exact str values (or tuples of them) are cached: equal values of other types can
    # differ in encoding (True == 1 == 1.0).
    kind = type(value)
    if kind is str or (kind is tuple and all(type(item) is str for item in value)):
        pair = (key, value)
        cached = _text_pairs.get(pair)
        if cached is None:
            if len(_text_pairs) >= _PAIR_CACHE_SIZE:
                _text_pairs.clear()
            cached = _text_pairs[pair] = _encode_key_value(key, value)
        return cached
    return _encode_key_value(key, value)


def _encode_key_value(key: str, value: Any) -> bytes:
    message = _text(_KEY_VALUE_KEY, key) + _length_delimited(_KEY_VALUE_VALUE, _any_value(value))
    return _varint(len(message)) + message


def _write_attributes(parts: list[bytes], tag: bytes, attributes: Mapping[str, Any] | None) -> None:
    """Appends one `tag` field per attribute; a value the wire format cannot hold is logged and
    left out, as the SDK's encoder does."""
    if not attributes:
        return
    # span.attributes is a mappingproxy over BoundedAttributes, whose items() goes through a
    # Python __getitem__ per key; copy() is one C-level dict copy.
    items = attributes.copy().items() if hasattr(attributes, "copy") else attributes.items()
    for key, value in items:
        try:
            encoded = _key_value(key, value)
        except (TypeError, ValueError, OverflowError, UnicodeError) as error:
            log.exception("mlscope: attribute %s not encoded: %s", key, error)
            continue
        parts.append(tag)
        parts.append(encoded)


# --- spans --------------------------------------------------------------------------------------


def _flags(context: SpanContext | None) -> bytes:
    return _REMOTE_FLAGS if context is not None and context.is_remote else _LOCAL_FLAGS


def _status(status: Status | None) -> bytes:
    if status is None:
        return b""
    message = status.description
    if status.status_code is StatusCode.UNSET and not message:  # nearly every span
        return _UNSET_STATUS
    code = status.status_code.value
    body = (_text(_STATUS_MESSAGE, message) if message else b"") + (_STATUS_CODE + _varint(code) if code else b"")
    return _length_delimited(_SPAN_STATUS, body)


def _event(event: Event) -> bytes:
    parts = [_EVENT_TIME, event.timestamp.to_bytes(8, "little"), _text(_EVENT_NAME, event.name)]
    _write_attributes(parts, _EVENT_ATTRIBUTES, event.attributes)
    if event.dropped_attributes:
        parts += (_EVENT_DROPPED_ATTRIBUTES, _varint(event.dropped_attributes))
    return _length_delimited(_SPAN_EVENTS, b"".join(parts))


def _link(link: Link) -> bytes:
    context = link.context
    parts = [
        _LINK_TRACE_ID, context.trace_id.to_bytes(16, "big"),
        _LINK_SPAN_ID, context.span_id.to_bytes(8, "big"),
        _LINK_FLAGS, _flags(context),
    ]  # fmt: skip
    _write_attributes(parts, _LINK_ATTRIBUTES, link.attributes)
    if link.dropped_attributes:
        parts += (_LINK_DROPPED_ATTRIBUTES, _varint(link.dropped_attributes))
    return _length_delimited(_SPAN_LINKS, b"".join(parts))


def _span_description(
    name: str, kind: SpanKind, flags: bytes, status: bytes, attributes: Mapping[str, Any] | None
) -> list[bytes]:
    """The Span fields that say what a span is rather than where it sits (name, kind, flags,
    status, attributes), as parts to join."""
    encoded_name = name.encode()
    parts = [_SPAN_NAME, _varint(len(encoded_name)), encoded_name, _SPAN_KIND[kind], _SPAN_FLAGS, flags, status]
    _write_attributes(parts, _SPAN_ATTRIBUTES, attributes)
    return parts


def _span(span: ReadableSpan) -> bytes:
    """One ScopeSpans.spans field: the Span message with its tag and length."""
    context = span.get_span_context()
    parent = span.parent
    parts = _span_description(span.name, span.kind, _flags(parent), _status(span.status), span.attributes)
    parts += (
        _SPAN_TRACE_ID, context.trace_id.to_bytes(16, "big"),
        _SPAN_SPAN_ID, context.span_id.to_bytes(8, "big"),
        _SPAN_START, (span.start_time or 0).to_bytes(8, "little"),
        _SPAN_END, (span.end_time or 0).to_bytes(8, "little"),
    )  # fmt: skip
    if parent is not None:
        parts += (_SPAN_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
    trace_state = context.trace_state
    if trace_state:
        parts.append(_text(_SPAN_TRACE_STATE, ",".join(f"{key}={value}" for key, value in trace_state.items())))
    if span.dropped_attributes:
        parts += (_SPAN_DROPPED_ATTRIBUTES, _varint(span.dropped_attributes))
    events = span.events  # read once: ReadableSpan builds a new tuple per access
    if events:
        parts += map(_event, events)
        if span.dropped_events:
            parts += (_SPAN_DROPPED_EVENTS, _varint(span.dropped_events))
    links = span.links
    if links:
        parts += map(_link, links)
        if span.dropped_links:
            parts += (_SPAN_DROPPED_LINKS, _varint(span.dropped_links))
    return _length_delimited(_SCOPE_SPANS_SPANS, b"".join(parts))


# span_id and parent_span_id (big-endian ids), start and end times (little-endian fixed64),
# each after its tag: one pack per pair instead of a to_bytes per value.
_IDS = struct.Struct(">2sQ2sQ")
_TIMES = struct.Struct("<1sQ1sQ")
_local_descriptions: dict[tuple[str, int, str | None], tuple[Mapping[str, Any], bytes]] = {}
"""(name, id(attributes), error) -> (attributes, their encoded description): the deep levels
write the same module's or op's name with the same attributes object on every call. The entry
holds the object, so its id cannot be reused while cached; emptied when full."""


def local_span_description(name: str, attributes: Mapping[str, Any], error: str | None = None) -> bytes:
    """What `encode_local_span` writes after the ids and times: the name, kind, flags, status and
    attributes of such a span (the part the native span writer, agents/native/, takes as is)."""
    status = _UNSET_STATUS if error is None else _status(Status(StatusCode.ERROR, error))
    return b"".join(_span_description(name, SpanKind.INTERNAL, _LOCAL_FLAGS, status, attributes))


def encode_local_span(
    trace_id: bytes,
    span_id: int,
    parent_span_id: int,
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    error: str | None = None,
) -> bytes:
    """One ScopeSpans.spans field for a span known only by plain values (`trace_id`: 16
    big-endian bytes): an INTERNAL span with a local parent, no trace state, events or links, as
    the deep levels write after the fact without a ReadableSpan. The same message `_span`
    writes for the equivalent ReadableSpan. `attributes` must not change once written: its
    encoding is cached by identity."""
    key = (name, id(attributes), error)
    cached = _local_descriptions.get(key)
    if cached is None or cached[0] is not attributes:
        if len(_local_descriptions) >= _PAIR_CACHE_SIZE:
            _local_descriptions.clear()
        cached = _local_descriptions[key] = (attributes, local_span_description(name, attributes, error))
    message = b"".join((
        _SPAN_TRACE_ID, trace_id,
        _IDS.pack(_SPAN_SPAN_ID, span_id, _SPAN_PARENT_SPAN_ID, parent_span_id),
        _TIMES.pack(_SPAN_START, start_ns, _SPAN_END, end_ns),
        cached[1],
    ))  # fmt: skip
    return _SCOPE_SPANS_SPANS + _varint(len(message)) + message


# --- resources and scopes -----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _resource_fields(resource: Resource) -> bytes:
    """A ResourceSpans' resource and schema_url fields: the same for every span of an agent."""
    attributes: list[bytes] = []
    _write_attributes(attributes, _RESOURCE_ATTRIBUTES, resource.attributes)
    fields = _length_delimited(_RESOURCE_SPANS_RESOURCE, b"".join(attributes))
    return fields + (_text(_RESOURCE_SPANS_SCHEMA_URL, resource.schema_url) if resource.schema_url else b"")


@functools.lru_cache(maxsize=256)
def _scope_fields(scope: InstrumentationScope | None) -> bytes:
    """A ScopeSpans' scope and schema_url fields (an empty scope message when there is none)."""
    if scope is None:
        return _length_delimited(_SCOPE_SPANS_SCOPE, b"")
    parts = [_text(_SCOPE_NAME, scope.name)]
    if scope.version:
        parts.append(_text(_SCOPE_VERSION, scope.version))
    _write_attributes(parts, _SCOPE_ATTRIBUTES, scope.attributes)
    fields = _length_delimited(_SCOPE_SPANS_SCOPE, b"".join(parts))
    return fields + (_text(_SCOPE_SPANS_SCHEMA_URL, scope.schema_url) if scope.schema_url else b"")


def _concatenated(tag: bytes, prefix: bytes, fields: Iterable[bytes]) -> bytes:
    return _length_delimited(tag, prefix + b"".join(fields))


def _resource_spans(resource: Resource, scopes: Mapping[InstrumentationScope | None, Iterable[bytes]]) -> bytes:
    """One ExportTraceServiceRequest.resource_spans field: `resource`'s spans by scope."""
    return _concatenated(
        _REQUEST_RESOURCE_SPANS,
        _resource_fields(resource),
        (_concatenated(_RESOURCE_SPANS_SCOPE_SPANS, _scope_fields(scope), encoded) for scope, encoded in scopes.items()),
    )


def encode_request(resource: Resource, scope: InstrumentationScope, spans: Iterable[bytes]) -> bytes:
    """The serialized ExportTraceServiceRequest of spans already encoded (`encode_local_span`),
    all of one Resource and scope."""
    return _resource_spans(resource, {scope: spans})


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ExportTraceServiceRequest of `spans`: one ResourceSpans per distinct
    Resource and one ScopeSpans per distinct scope in it, in order of first appearance."""
    by_resource: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    # (id(resource), id(scope)) -> that group's encoded spans. Equal Resources are grouped
    # together (as the SDK does), but hashing one costs a json.dumps, so each distinct object is
    # hashed once per batch; the spans keep their objects alive, so no id is reused meanwhile.
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        identity = (id(resource), id(scope))
        encoded = by_identity.get(identity)
        if encoded is None:
            encoded = by_identity[identity] = by_resource.setdefault(resource, {}).setdefault(scope, [])
        encoded.append(_span(span))
    return b"".join(_resource_spans(resource, scopes) for resource, scopes in by_resource.items())
