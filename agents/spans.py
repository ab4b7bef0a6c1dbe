"""Finished spans written after the fact: the deep levels know every start and end time only
once the model call has returned, so their spans are built whole, never started and ended one by
one through the SDK's tracer (sampler, lock, limits and two processor callbacks a span, for the
hundreds of spans of one call: docs/PERFORMANCE.md). What this skips is per-span sampling
(children follow their parent's sampled flag, as the SDK's default ParentBased sampler would
decide) and span limits (these spans carry a handful of attributes).

An agent writes them in one of three ways (`SpanWriterKind`), chosen once when it starts
(agents/api.py start_agent): `SpanWriter` here hands ReadableSpans to the SDK's processors on the
model's thread (`InlineSpans`); agents/deferred.py encodes them on a worker thread, in Python or
with the native span writer."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from opentelemetry.sdk.trace import ReadableSpan, Tracer
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanContext, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from mlscope.conventions import AGENT_SCOPE, AGENT_WRITERS

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope(AGENT_SCOPE)
_UNSET = Status(StatusCode.UNSET)

Context = TypeVar("Context")


class SpanSink(Protocol[Context]):
    """Where the deep levels write their finished spans: as ReadableSpans through the SDK's
    processors (`SpanWriter`), or encoded for OTLP straight away (agents/deferred.py). A
    `Context` names a span for its children: a SpanContext, or just a span id."""

    parent: Context
    """The model span every written span descends from."""

    @property
    def recording(self) -> bool:
        """False when the parent was not sampled: nothing written would be exported."""

    def new_context(self) -> Context:
        """A context for a span to be written later; take it first so children can point at it."""

    def write(
        self,
        name: str,
        context: Context,
        parent: Context,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue],
        error: str | None = None,
    ) -> None: ...


class SpanWriter(SpanSink[SpanContext]):
    """Writes finished child spans of one parent span through `tracer`'s processors."""

    def __init__(self, tracer: Tracer, parent: SpanContext) -> None:
        self._processor = tracer.span_processor
        self._resource = tracer.resource
        self._new_span_id = tracer.id_generator.generate_span_id
        self.parent = parent

    @property
    def recording(self) -> bool:
        return self.parent.trace_flags.sampled

    def new_context(self) -> SpanContext:
        return SpanContext(self.parent.trace_id, self._new_span_id(), False, self.parent.trace_flags)

    def write(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue],
        error: str | None = None,
    ) -> None:
        status = _UNSET if error is None else Status(StatusCode.ERROR, error)
        span = ReadableSpan(
            name,
            context,
            parent,
            self._resource,
            attributes,
            status=status,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=SCOPE,
        )
        self._processor.on_end(span)


class SpanWriterKind(enum.Enum):
    """How an agent writes its deep (layer, library) spans; the value is its resource's
    `mlscope.agent.writer` (conventions.AGENT_WRITER)."""

    INLINE = AGENT_WRITERS[0]
    """ReadableSpans through the provider's processors, on the thread that traced the model."""
    ENCODED = AGENT_WRITERS[1]
    """Encoded to OTLP in Python on the agent's worker thread (agents/deferred.py)."""
    NATIVE = AGENT_WRITERS[2]
    """Encoded by the native span writer on the worker thread, Python where it cannot (ONNX Runtime)."""


def writer_kind(deep_levels: bool, native_built: bool, random_span_ids: bool) -> SpanWriterKind:
    """The writer an agent uses when none is asked for: the worker whenever there are deep spans
    to write, natively where the native module is built and span ids are the SDK's random ones
    (the native writer draws its own); inline when the agent writes no deep spans at all."""
    if not deep_levels:
        return SpanWriterKind.INLINE
    return SpanWriterKind.NATIVE if native_built and random_span_ids else SpanWriterKind.ENCODED


WriterFor = Callable[[SpanContext], SpanSink[Any]]
"""A writer of the children of the parent span it is given."""
SpanJob = Callable[[WriterFor], None]
"""Writes spans under parents that have already ended (ONNX Runtime's nodes, read from its profile)."""


class Capture(Protocol):
    """What records a model's calls (agents/torch_capture.py TorchCapture) and writes their spans."""

    def write_spans(self, recording: Any, sink: SpanSink[Any]) -> Mapping[str, AttributeValue]:
        """Writes the spans of an ended `recording` (its own record of one call) to `sink`;
        returns attributes for the model span."""

    def span_counts(self, recording: Any) -> Mapping[str, int]:
        """How many spans of each level `write_spans` would write for `recording`, counted
        without writing them: what dropping the call loses."""


@dataclass(frozen=True)
class RecordedCall:
    """One traced model call: its ended recording and its model span, still open."""

    capture: Capture
    recording: Any
    """The capture's record of the call."""
    model_span: Span
    end_ns: int
    """The model span's end time."""


class DeepSpans(Protocol):
    """The agent's one way of writing its deep spans (see SpanWriterKind)."""

    kind: SpanWriterKind

    def write_call(self, call: RecordedCall) -> None:
        """Writes the call's spans, sets its model span's attributes and ends it (now or later)."""

    def write(self, job: SpanJob) -> None:
        """Runs `job` with writers for the parents it names (now or later)."""

    def force_flush(self, timeout_s: float) -> bool:
        """Every span written so far handed to the exporter; False when `timeout_s` ran out."""

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Writes and exports what is queued, then stops; gives up after `timeout_s` (None: no limit)."""

    def abandon(self) -> None:
        """In the child of a fork: forgets the parent's queue and worker (which the child does
        not have) without waiting for them; the agent has a new writer from here on."""


class InlineSpans(DeepSpans):
    """Writes on the caller's thread through `tracer`'s processors: every processor added to the
    provider sees the deep spans, as ReadableSpans (tests that read them back)."""

    kind = SpanWriterKind.INLINE

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def write_call(self, call: RecordedCall) -> None:
        try:
            writer = SpanWriter(self._tracer, call.model_span.get_span_context())
            call.model_span.set_attributes(call.capture.write_spans(call.recording, writer))
        except Exception:  # a tracing bug must neither fail nor mask the model call
            log.exception("mlscope: layer/library spans of a call not written")
        call.model_span.end(end_time=call.end_ns)

    def write(self, job: SpanJob) -> None:
        try:
            job(lambda parent: SpanWriter(self._tracer, parent))
        except Exception:
            log.exception("mlscope: deep spans not written")

    def force_flush(self, timeout_s: float) -> bool:
        return True

    def shutdown(self, timeout_s: float | None = None) -> None:
        pass

    def abandon(self) -> None:
        pass
