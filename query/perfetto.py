"""Perfetto's track model for a timeline, and the trace in Perfetto's own protobuf format. Pure:
no I/O.

Both Perfetto exports (the Chrome trace-event JSON of query/export.py and the protobuf here) lay
a trace out the same way: a process per service, each service's spans spread over as few threads
("lanes") as keep every thread's slices properly nested (`assign_lanes`), and a counter track per
metric series sampled in the trace's window (`series_label`).

The protobuf form is a `Trace` of `TracePacket`s holding `TrackDescriptor`s (processes, threads,
counters) and `TrackEvent`s (TYPE_SLICE_BEGIN / TYPE_SLICE_END per span at its own nanosecond
start and end, TYPE_COUNTER with `double_counter_value` per sample), on one packet sequence.
Event and annotation names are interned (`InternedData`), a span's attributes are string debug
annotations. It is written field by field (mlscope/protowire.py) rather than with generated
classes: only a few messages are needed, and nothing has to be installed for them. The tests read
it back with classes built from the field numbers below; trace_processor itself is not run by them
(it downloads its binary at first use, which this project's machines cannot).

Field numbers, from google/perfetto's protos/perfetto/trace/:
  trace.proto                         Trace.packet = 1
  trace_packet.proto                  TracePacket: timestamp = 8, trusted_packet_sequence_id = 10,
                                      track_event = 11, interned_data = 12, sequence_flags = 13,
                                      track_descriptor = 60; SequenceFlags:
                                      SEQ_INCREMENTAL_STATE_CLEARED = 1, SEQ_NEEDS_INCREMENTAL_STATE = 2
  track_event/track_descriptor.proto  TrackDescriptor: uuid = 1, name = 2, process = 3, thread = 4,
                                      parent_uuid = 5, counter = 8
  track_event/process_descriptor.proto ProcessDescriptor: pid = 1, process_name = 6
  track_event/thread_descriptor.proto ThreadDescriptor: pid = 1, tid = 2, thread_name = 5
  track_event/counter_descriptor.proto CounterDescriptor (left empty: a user-named counter)
  track_event/track_event.proto       TrackEvent: debug_annotations = 4, type = 9, name_iid = 10,
                                      track_uuid = 11, categories = 22, double_counter_value = 44;
                                      Type: SLICE_BEGIN = 1, SLICE_END = 2, COUNTER = 4;
                                      EventName: iid = 1, name = 2
  track_event/debug_annotation.proto  DebugAnnotation: name_iid = 1, int_value = 4,
                                      string_value = 6; DebugAnnotationName: iid = 1, name = 2
  interned_data/interned_data.proto   InternedData: event_names = 2, debug_annotation_names = 3
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mlscope.protowire import bytes_field, double_field, string_field, uint_field

from .analysis import MetricSample
from .timeline import Span, Timeline, TimelineSpan

# --- lanes and counter tracks, shared by both Perfetto forms ----------------------------------


def _nests(lane: list[Span], span: Span) -> bool:
    """Whether `span` can go on a lane whose still-open spans are `lane` (oldest first); spans
    that ended before it starts are closed on the way."""
    while lane and lane[-1].end_ns <= span.start_ns:
        lane.pop()
    return not lane or lane[-1].end_ns >= span.end_ns


def _lane_order(span: Span) -> tuple[int, int, str]:
    return (span.start_ns, -span.end_ns, span.span_id)


def assign_lanes(spans: Sequence[Span]) -> dict[str, int]:
    """span id -> lane (0, 1, ...), such that the spans of a lane nest: each one lies within
    the one before it or after it ends. Greedy by start time, longest first: a child lands in
    its parent's lane unless a sibling still runs there."""
    open_spans: list[list[Span]] = []  # per lane, the stack of spans still open
    lanes: dict[str, int] = {}
    for span in sorted(spans, key=_lane_order):
        lane = next((index for index, stack in enumerate(open_spans) if _nests(stack, span)), len(open_spans))
        if lane == len(open_spans):
            open_spans.append([])
        open_spans[lane].append(span)
        lanes[span.span_id] = lane
    return lanes


def series_label(sample: MetricSample) -> str:
    """`hw.power` or `hw.power hw.id=gpu0`: the counter track of one series."""
    attributes = " ".join(f"{key}={value}" for key, value in sorted(sample.attributes.items()))
    return f"{sample.name} {attributes}" if attributes else sample.name


# Field numbers (see the module docstring for the .proto files they come from).
TRACE_PACKET = 1
PACKET_TIMESTAMP, PACKET_SEQUENCE_ID, PACKET_TRACK_EVENT, PACKET_INTERNED_DATA = 8, 10, 11, 12
PACKET_SEQUENCE_FLAGS, PACKET_TRACK_DESCRIPTOR = 13, 60
SEQ_INCREMENTAL_STATE_CLEARED, SEQ_NEEDS_INCREMENTAL_STATE = 1, 2
TRACK_UUID, TRACK_NAME, TRACK_PROCESS, TRACK_THREAD, TRACK_PARENT_UUID, TRACK_COUNTER = 1, 2, 3, 4, 5, 8
PROCESS_PID, PROCESS_NAME = 1, 6
THREAD_PID, THREAD_TID, THREAD_NAME = 1, 2, 5
EVENT_DEBUG_ANNOTATIONS, EVENT_TYPE, EVENT_NAME_IID, EVENT_TRACK_UUID = 4, 9, 10, 11
EVENT_CATEGORIES, EVENT_DOUBLE_COUNTER_VALUE = 22, 44
TYPE_SLICE_BEGIN, TYPE_SLICE_END, TYPE_COUNTER = 1, 2, 4
ANNOTATION_NAME_IID, ANNOTATION_INT_VALUE, ANNOTATION_STRING_VALUE = 1, 4, 6
INTERNED_EVENT_NAMES, INTERNED_ANNOTATION_NAMES = 2, 3
INTERNED_IID, INTERNED_NAME = 1, 2

SEQUENCE_ID = 1  # every packet is on one sequence: one writer wrote them all, in time order
_SLICE_BEGIN, _SLICE_END = uint_field(EVENT_TYPE, TYPE_SLICE_BEGIN), uint_field(EVENT_TYPE, TYPE_SLICE_END)


class _Interned:
    """One interning table of the sequence: iids from 1, each name sent once, in the first packet
    that refers to it."""

    def __init__(self, field: int) -> None:
        self._field = field
        self._iids: dict[str, int] = {}

    def iid(self, name: str, new: list[bytes]) -> int:
        """`name`'s iid; a name not sent yet is added to `new` (InternedData fields)."""
        iid = self._iids.get(name)
        if iid is None:
            iid = self._iids[name] = len(self._iids) + 1
            new.append(bytes_field(self._field, uint_field(INTERNED_IID, iid) + string_field(INTERNED_NAME, name)))
        return iid


# --- the trace ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Edge:
    """A slice's begin or end on its track."""

    time_ns: int
    track: int
    item: TimelineSpan
    begin: bool


@dataclass(frozen=True)
class _Count:
    """A sample on its counter track."""

    time_ns: int
    track: int
    sample: MetricSample


def _track_edges(track: int, items: Sequence[TimelineSpan]) -> Iterator[_Edge]:
    """The begins and ends of one lane's spans in time order, each end before the begins at its
    time and inner slices ending before the slices around them (the lane's spans nest)."""
    open_items: list[TimelineSpan] = []
    for item in sorted(items, key=lambda i: _lane_order(i.span)):
        while open_items and _end(open_items[-1]) <= item.span.start_ns:
            closed = open_items.pop()
            yield _Edge(_end(closed), track, closed, False)
        yield _Edge(item.span.start_ns, track, item, True)
        open_items.append(item)
    while open_items:
        closed = open_items.pop()
        yield _Edge(_end(closed), track, closed, False)


def _end(item: TimelineSpan) -> int:
    return max(item.span.end_ns, item.span.start_ns)  # a clock step back must not end a slice before its begin


def _packet(body: bytes, time_ns: int | None = None, flags: int = 0) -> bytes:
    fields = uint_field(PACKET_SEQUENCE_ID, SEQUENCE_ID) + body
    if time_ns is not None:
        fields = uint_field(PACKET_TIMESTAMP, time_ns) + fields
    if flags:
        fields += uint_field(PACKET_SEQUENCE_FLAGS, flags)
    return bytes_field(TRACE_PACKET, fields)


def _descriptor(uuid: int, *fields: bytes) -> bytes:
    return bytes_field(PACKET_TRACK_DESCRIPTOR, uint_field(TRACK_UUID, uuid) + b"".join(fields))


class _Writer:
    """The packets of one trace, in order; interning state lives here."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self._uuids = 0
        self._names = _Interned(INTERNED_EVENT_NAMES)
        self._annotation_names = _Interned(INTERNED_ANNOTATION_NAMES)
        self._attributes: dict[tuple[str, str], bytes] = {}

    def track(self, *fields: bytes) -> int:
        self._uuids += 1
        # The first packet of the sequence clears its incremental state (interned names).
        flags = SEQ_INCREMENTAL_STATE_CLEARED if not self.packets else 0
        self.packets.append(_packet(_descriptor(self._uuids, *fields), flags=flags))
        return self._uuids

    def _annotation(self, name: str, value: bytes, new: list[bytes]) -> bytes:
        name_iid = uint_field(ANNOTATION_NAME_IID, self._annotation_names.iid(name, new))
        return bytes_field(EVENT_DEBUG_ANNOTATIONS, name_iid + value)

    def _attribute(self, name: str, value: str, new: list[bytes]) -> bytes:
        """An attribute as a string annotation; the same pair recurs on every call of a layer,
        so its encoding is kept (once its name is interned, the bytes never change)."""
        encoded = self._attributes.get((name, value))
        if encoded is None:
            encoded = self._attributes[name, value] = self._annotation(
                name, string_field(ANNOTATION_STRING_VALUE, value), new)
        return encoded

    def slice_edge(self, edge: _Edge) -> None:
        track = uint_field(EVENT_TRACK_UUID, edge.track)
        if not edge.begin:
            self.packets.append(_packet(bytes_field(PACKET_TRACK_EVENT, track + _SLICE_END), edge.time_ns))
            return
        span, new = edge.item.span, []
        event = b"".join((
            track, _SLICE_BEGIN, uint_field(EVENT_NAME_IID, self._names.iid(span.name, new)),
            string_field(EVENT_CATEGORIES, span.level),
            self._annotation("span_id", string_field(ANNOTATION_STRING_VALUE, span.span_id), new),
            self._annotation("parent_span_id", string_field(ANNOTATION_STRING_VALUE, span.parent_span_id), new),
            *(self._attribute(name, str(value), new) for name, value in span.attributes.items()),
            self._annotation("self_ns", uint_field(ANNOTATION_INT_VALUE, edge.item.self_ns), new),
        ))
        body = bytes_field(PACKET_TRACK_EVENT, event)
        if new:
            body = bytes_field(PACKET_INTERNED_DATA, b"".join(new)) + body
        self.packets.append(_packet(body, edge.time_ns, SEQ_NEEDS_INCREMENTAL_STATE))

    def counter(self, count: _Count) -> None:
        event = (uint_field(EVENT_TRACK_UUID, count.track) + uint_field(EVENT_TYPE, TYPE_COUNTER)
                 + double_field(EVENT_DOUBLE_COUNTER_VALUE, count.sample.value))
        self.packets.append(_packet(bytes_field(PACKET_TRACK_EVENT, event), count.time_ns))


def to_perfetto_proto(timeline: Timeline, samples: Iterable[MetricSample] = ()) -> bytes:
    """The timeline and the metric samples around it as a Perfetto protobuf trace (a `.pftrace`
    file): times are the spans' own nanoseconds since the epoch."""
    writer = _Writer()
    services: dict[str, list[TimelineSpan]] = {}
    for item in timeline.spans:
        services.setdefault(item.span.service, []).append(item)
    samples = sorted(samples, key=lambda s: (s.time_ns, s.name))
    for sample in samples:
        services.setdefault(sample.service, [])  # a service with samples but no spans is a process too

    processes: dict[str, tuple[int, int]] = {}  # service -> (pid, process track)
    edges: list[Iterator[_Edge]] = []
    tid = 0
    for pid, (service, items) in enumerate(services.items(), start=1):
        name = service or "(no service)"
        process = writer.track(
            bytes_field(TRACK_PROCESS, uint_field(PROCESS_PID, pid) + string_field(PROCESS_NAME, name)))
        processes[service] = (pid, process)
        lanes = assign_lanes([item.span for item in items])
        by_lane: dict[int, list[TimelineSpan]] = {}
        for item in items:
            by_lane.setdefault(lanes[item.span.span_id], []).append(item)
        for lane in sorted(by_lane):
            tid += 1  # thread ids unique across the trace's processes, as on one machine
            thread = writer.track(
                uint_field(TRACK_PARENT_UUID, process),
                bytes_field(TRACK_THREAD, uint_field(THREAD_PID, pid) + uint_field(THREAD_TID, tid)
                            + string_field(THREAD_NAME, f"lane {lane + 1}")),
            )
            edges.append(_track_edges(thread, by_lane[lane]))

    counters: dict[tuple[str, str], int] = {}
    for sample in samples:
        label = series_label(sample)
        if (sample.service, label) not in counters:
            name = f"{label} ({sample.unit})" if sample.unit else label
            counters[sample.service, label] = writer.track(
                uint_field(TRACK_PARENT_UUID, processes[sample.service][1]), string_field(TRACK_NAME, name),
                bytes_field(TRACK_COUNTER, b""))

    counts = [_Count(s.time_ns, counters[s.service, series_label(s)], s) for s in samples]
    # One time-ordered stream: each lane's order (nesting at equal times) kept as it is.
    for event in heapq.merge(*edges, counts, key=lambda e: e.time_ns):
        if isinstance(event, _Edge):
            writer.slice_edge(event)
        else:
            writer.counter(event)
    return b"".join(writer.packets)
