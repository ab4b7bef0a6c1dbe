"""The native span writer (agents/native/span_writer.cpp) writes the spans the Python writer
does: same names, times, parents, attributes and status, byte for byte but for the ids."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable

import pytest
import torch
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, TraceFlags
from torch import nn

from mlscope.agents import native_module
from mlscope.agents.api import choose_writer
from mlscope.agents.deferred import EncodingSpanWriter
from mlscope.agents.spans import SpanWriterKind
from mlscope.agents.otlp_encoder import encode_local_span, encode_request
from mlscope.agents.resnet import BasicBlock, resnet18
from mlscope.agents.spans import SCOPE
from mlscope.agents.call_tree import ENTER, RAISE, RETURN
from mlscope.agents.torch_capture import CaptureOptions, Recording, TorchCapture

PARENT = SpanContext(0x5B8EFFF798038103D269B633813FC60C, 0x1122334455667788, False, TraceFlags(1))


@pytest.fixture(autouse=True, scope="module")
def native() -> None:
    assert native_module.load() is not None, "the native module did not build: see the warning logged"


def decoded(spans: list[bytes]) -> list[SpanMessage]:
    request = ExportTraceServiceRequest.FromString(encode_request(Resource({}), SCOPE, spans))
    return list(request.resource_spans[0].scope_spans[0].spans)


def canonical(spans: list[SpanMessage]) -> list[tuple[object, ...]]:
    """Each span with its ids replaced by what they point at: ids differ between writers."""
    by_id = {span.span_id: span for span in spans}

    def where(span_id: bytes) -> object:
        if span_id == PARENT.span_id.to_bytes(8, "big"):
            return "model span"
        parent = by_id[span_id]
        return (parent.name, parent.start_time_unix_nano, parent.end_time_unix_nano)

    return [
        (span.name, span.start_time_unix_nano, span.end_time_unix_nano, where(span.parent_span_id),
         span.trace_id, span.kind, span.flags, span.status.code, span.status.message,
         [(pair.key, str(pair.value)) for pair in span.attributes])
        for span in spans
    ]  # fmt: skip


class SequentialIds(RandomIdGenerator):
    """Not the SDK's random ids: span ids 1, 2, ..."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._ids)


def both_writers(capture: TorchCapture, recording: Recording) -> tuple[EncodingSpanWriter, EncodingSpanWriter]:
    """The recording written natively (the SDK's random ids) and in Python (counted ids)."""
    native = EncodingSpanWriter(PARENT, RandomIdGenerator().generate_span_id, native=True)
    counted = itertools.count(1)
    python = EncodingSpanWriter(PARENT, lambda: next(counted))
    assert native.native and not python.native
    native_attributes = capture.write_spans(recording, native)
    assert capture.write_spans(recording, python) == native_attributes
    return native, python


def recorded(capture: TorchCapture, call: Callable[[], object]) -> Recording:
    recording = capture.start()
    assert recording is not None
    try:
        with torch.inference_mode():
            call()
    finally:
        capture.end(recording)
    return recording


@pytest.mark.parametrize("nested_ops", [False, True], ids=["top-level ops", "nested ops"])
def test_resnet18_at_library_level(nested_ops: bool) -> None:
    model, images = resnet18(), torch.randn(1, 3, 224, 224)
    capture = TorchCapture(model, "resnet18", CaptureOptions(ops=True, nested_ops=nested_ops))
    native, python = both_writers(capture, recorded(capture, lambda: model(images)))
    assert len(native.spans) == len(python.spans) > 140
    assert canonical(decoded(native.spans)) == canonical(decoded(python.spans))


def test_the_same_bytes_but_for_the_ids() -> None:
    model = BasicBlock(4, 8, stride=2)
    capture = TorchCapture(model, "block", CaptureOptions(ops=True))
    native, _ = both_writers(capture, recorded(capture, lambda: model(torch.zeros(1, 4, 6, 6))))
    ids = set()
    for encoded, span in zip(native.spans, decoded(native.spans)):
        attributes = {pair.key: pair.value.string_value for pair in span.attributes}
        error = span.status.message or None
        span_id, parent_id = int.from_bytes(span.span_id, "big"), int.from_bytes(span.parent_span_id, "big")
        again = encode_local_span(native.trace_id, span_id, parent_id, span.name, span.start_time_unix_nano,
                                  span.end_time_unix_nano, attributes, error)  # fmt: skip
        assert encoded == again
        ids.add(span_id)
    assert len(ids) == len(native.spans) and 0 not in ids and PARENT.span_id not in ids


def test_odd_hook_records_pair_as_in_python() -> None:
    """Raised forwards, an exit with no enter, a call left open, a module from outside the tree."""
    model = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity(), nn.Tanh()))
    outside = nn.GELU()
    capture = TorchCapture(model, "odd", CaptureOptions())
    inner, identity, tanh, relu = model[1], model[1][0], model[1][1], model[0]
    recording = Recording()
    recording.events += [
        (model, 100, ENTER, None),
        (relu, 110, ENTER, None),
        (relu, 120, RETURN, None),
        (outside, 125, RETURN, None),  # no enter: ignored
        (inner, 130, ENTER, None),
        (identity, 140, ENTER, None),  # never exits: closed when its parent does, failed
        (tanh, 150, ENTER, None),
        (outside, 155, ENTER, None),
        (outside, 158, RETURN, None),
        (tanh, 160, RAISE, None),
        (inner, 170, RETURN, None),
        (model, 180, ENTER, None),  # still open at the end
    ]
    recording.end_perf_ns = 200
    native, python = both_writers(capture, recording)
    spans = canonical(decoded(native.spans))
    assert spans == canonical(decoded(python.spans))
    by_name = {span[0]: span for span in spans}
    assert by_name["GELU"][-1][1:] == [("mlscope.layer.path", 'string_value: "?"\n'),
                                       ("mlscope.layer.type", 'string_value: "GELU"\n')]  # fmt: skip
    assert by_name["1.1"][8] == "forward raised" and by_name["1.0"][8] == "forward raised"
    assert by_name["0"][8] == ""
    clock = recording.clock
    assert [span[1:3] for span in spans if span[0] == "odd"] == [
        (clock.wall(100), clock.wall(200)),  # entered twice, never returned: both end at the end
        (clock.wall(180), clock.wall(200)),
    ]


def test_another_id_generator_keeps_the_python_writer() -> None:
    assert choose_writer("library", SequentialIds()) is SpanWriterKind.ENCODED
    assert choose_writer("library", RandomIdGenerator()) is SpanWriterKind.NATIVE
    model = nn.Sequential(nn.ReLU())
    capture = TorchCapture(model, "tiny", CaptureOptions())
    counted = itertools.count(1)
    writer = EncodingSpanWriter(PARENT, lambda: next(counted))
    capture.write_spans(recorded(capture, lambda: model(torch.ones(2))), writer)
    assert sorted(int.from_bytes(span.span_id, "big") for span in decoded(writer.spans)) == [1, 2]


def test_a_dead_module_leaves_the_descriptions() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    capture = TorchCapture(model, "tiny", CaptureOptions())
    gone = id(model[1])
    assert gone in capture._layer_descriptions
    model[1] = nn.Sigmoid()
    gc.collect()
    assert gone not in capture._layer_descriptions
    writer = EncodingSpanWriter(PARENT, RandomIdGenerator().generate_span_id, native=True)
    capture.write_spans(recorded(capture, lambda: model(torch.ones(2))), writer)
    names = sorted(span.name for span in decoded(writer.spans))
    assert names == ["0", "Sigmoid", "tiny"]  # the new module, from outside the tree it was built for
