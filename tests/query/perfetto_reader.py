"""A reader of Perfetto protobuf traces for the tests: message classes built from a descriptor
with Perfetto's field numbers (google/perfetto protos/perfetto/trace/: trace.proto,
trace_packet.proto, track_event/{track_event,track_descriptor,process_descriptor,
thread_descriptor,counter_descriptor,debug_annotation}.proto, interned_data/interned_data.proto),
and a replay of the packets as trace_processor reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields

FieldProto = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = FieldProto.LABEL_OPTIONAL, FieldProto.LABEL_REPEATED
UINT64, UINT32, INT32, INT64 = (FieldProto.TYPE_UINT64, FieldProto.TYPE_UINT32, FieldProto.TYPE_INT32,
                                FieldProto.TYPE_INT64)
STRING, DOUBLE, MESSAGE, ENUM = (FieldProto.TYPE_STRING, FieldProto.TYPE_DOUBLE, FieldProto.TYPE_MESSAGE,
                                 FieldProto.TYPE_ENUM)

# message -> (field name, number, type, label, type name): the subset mlscope writes, plus the
# non-interned name variants, with the numbers of Perfetto's .proto files.
SCHEMA: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Trace": [("packet", 1, MESSAGE, REPEATED, "TracePacket")],
    "TracePacket": [
        ("timestamp", 8, UINT64, OPTIONAL, ""), ("trusted_packet_sequence_id", 10, UINT32, OPTIONAL, ""),
        ("track_event", 11, MESSAGE, OPTIONAL, "TrackEvent"), ("interned_data", 12, MESSAGE, OPTIONAL, "InternedData"),
        ("sequence_flags", 13, UINT32, OPTIONAL, ""), ("track_descriptor", 60, MESSAGE, OPTIONAL, "TrackDescriptor"),
    ],
    "TrackDescriptor": [
        ("uuid", 1, UINT64, OPTIONAL, ""), ("name", 2, STRING, OPTIONAL, ""),
        ("process", 3, MESSAGE, OPTIONAL, "ProcessDescriptor"), ("thread", 4, MESSAGE, OPTIONAL, "ThreadDescriptor"),
        ("parent_uuid", 5, UINT64, OPTIONAL, ""), ("counter", 8, MESSAGE, OPTIONAL, "CounterDescriptor"),
    ],
    "ProcessDescriptor": [("pid", 1, INT32, OPTIONAL, ""), ("process_name", 6, STRING, OPTIONAL, "")],
    "ThreadDescriptor": [("pid", 1, INT32, OPTIONAL, ""), ("tid", 2, INT32, OPTIONAL, ""),
                         ("thread_name", 5, STRING, OPTIONAL, "")],
    "CounterDescriptor": [],
    "TrackEvent": [
        ("debug_annotations", 4, MESSAGE, REPEATED, "DebugAnnotation"), ("type", 9, ENUM, OPTIONAL, "TrackEvent.Type"),
        ("name_iid", 10, UINT64, OPTIONAL, ""), ("track_uuid", 11, UINT64, OPTIONAL, ""),
        ("categories", 22, STRING, REPEATED, ""), ("name", 23, STRING, OPTIONAL, ""),
        ("counter_value", 30, INT64, OPTIONAL, ""), ("double_counter_value", 44, DOUBLE, OPTIONAL, ""),
    ],
    "DebugAnnotation": [("name_iid", 1, UINT64, OPTIONAL, ""), ("int_value", 4, INT64, OPTIONAL, ""),
                        ("string_value", 6, STRING, OPTIONAL, ""), ("name", 10, STRING, OPTIONAL, "")],
    "InternedData": [("event_names", 2, MESSAGE, REPEATED, "EventName"),
                     ("debug_annotation_names", 3, MESSAGE, REPEATED, "DebugAnnotationName")],
    "EventName": [("iid", 1, UINT64, OPTIONAL, ""), ("name", 2, STRING, OPTIONAL, "")],
    "DebugAnnotationName": [("iid", 1, UINT64, OPTIONAL, ""), ("name", 2, STRING, OPTIONAL, "")],
}
TRACK_EVENT_TYPES = {"TYPE_UNSPECIFIED": 0, "TYPE_SLICE_BEGIN": 1, "TYPE_SLICE_END": 2, "TYPE_INSTANT": 3,
                     "TYPE_COUNTER": 4}
SLICE_BEGIN, SLICE_END, COUNTER = 1, 2, 4
SEQ_INCREMENTAL_STATE_CLEARED, SEQ_NEEDS_INCREMENTAL_STATE = 1, 2


def perfetto_classes() -> dict[str, Any]:
    """Message classes of package perfetto.protos, proto2, built from SCHEMA."""
    file = descriptor_pb2.FileDescriptorProto(name="mlscope_test_perfetto.proto", package="perfetto.protos",
                                              syntax="proto2")
    for name, fields in SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            message.field.add(name=field_name, number=number, type=field_type, label=label,
                              **({"type_name": f".perfetto.protos.{type_name}"} if type_name else {}))
        if name == "TrackEvent":
            enum = message.enum_type.add(name="Type")
            for value_name, number in TRACK_EVENT_TYPES.items():
                enum.value.add(name=value_name, number=number)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"perfetto.protos.{name}"))
            for name in SCHEMA}


TRACE_CLASS = perfetto_classes()["Trace"]


@dataclass
class Slice:
    name: str
    track: int
    begin_ns: int
    categories: list[str]
    annotations: dict[str, Any]
    parent: Slice | None  # the slice it lies in on its track
    end_ns: int = -1


@dataclass
class Read:
    """A parsed trace: its tracks by uuid, slices by span id, counter points by track."""

    tracks: dict[int, Any] = field(default_factory=dict)
    slices: dict[str, Slice] = field(default_factory=dict)
    counters: dict[int, list[tuple[int, float]]] = field(default_factory=dict)


def assert_no_unknown_fields(message: Any) -> None:
    assert len(unknown_fields.UnknownFieldSet(message)) == 0, message
    for descriptor, value in message.ListFields():
        if descriptor.type == MESSAGE:
            for child in (value if descriptor.is_repeated else [value]):
                assert_no_unknown_fields(child)


def read(data: bytes) -> Read:
    """Parses and replays the packets as trace_processor does: interned names per sequence,
    slices opened and closed on a stack per track. Checks the sequence's rules on the way."""
    trace = TRACE_CLASS.FromString(data)
    assert_no_unknown_fields(trace)
    result = Read()
    names: dict[int, str] = {}
    annotation_names: dict[int, str] = {}
    open_slices: dict[int, list[Slice]] = {}
    last_ns = 0
    for index, packet in enumerate(trace.packet):
        assert packet.trusted_packet_sequence_id == 1
        assert bool(packet.sequence_flags & SEQ_INCREMENTAL_STATE_CLEARED) == (index == 0)
        if packet.HasField("track_descriptor"):
            assert not packet.HasField("timestamp")
            descriptor = packet.track_descriptor
            assert descriptor.uuid not in result.tracks
            result.tracks[descriptor.uuid] = descriptor
            continue
        assert packet.timestamp >= last_ns  # one writer, in time order
        last_ns = packet.timestamp
        for entry in packet.interned_data.event_names:
            assert names.setdefault(entry.iid, entry.name) == entry.name
        for entry in packet.interned_data.debug_annotation_names:
            assert annotation_names.setdefault(entry.iid, entry.name) == entry.name
        event = packet.track_event
        assert event.track_uuid in result.tracks
        if event.type == COUNTER:
            assert result.tracks[event.track_uuid].HasField("counter")
            result.counters.setdefault(event.track_uuid, []).append((packet.timestamp, event.double_counter_value))
        elif event.type == SLICE_BEGIN:
            assert packet.sequence_flags & SEQ_NEEDS_INCREMENTAL_STATE
            stack = open_slices.setdefault(event.track_uuid, [])
            annotations = {annotation_names[a.name_iid]: a.string_value if a.HasField("string_value") else a.int_value
                           for a in event.debug_annotations}
            opened = Slice(names[event.name_iid], event.track_uuid, packet.timestamp, list(event.categories),
                           annotations, stack[-1] if stack else None)
            stack.append(opened)
            result.slices[annotations["span_id"]] = opened
        else:
            assert event.type == SLICE_END
            closed = open_slices[event.track_uuid].pop()
            closed.end_ns = packet.timestamp
            if closed.parent is not None:  # a slice ends within the one it began in
                assert closed.parent.begin_ns <= closed.begin_ns <= closed.end_ns
                assert closed.parent.end_ns == -1
    assert all(not stack for stack in open_slices.values())
    return result


def process_name(result: Read, track: int) -> str:
    descriptor = result.tracks[track]
    while not descriptor.HasField("process"):
        descriptor = result.tracks[descriptor.parent_uuid]
    return descriptor.process.process_name
