"""Finished spans written after the fact: the deep levels know every start and end time only
once the model call has returned, so their spans are built whole and handed straight to the
SDK's span processors (and so to the same exporter as every other span of the agent).

Why not `tracer.start_span(start_time=...)` + `span.end(end_time=...)`: measured here at ~15 µs
a span (sampler, lock, limits, two processor callbacks) against ~1.9 µs for a ReadableSpan passed
to `on_end`, and a ResNet-18 call at library level has ~500 of them. What this skips is per-span
sampling (children follow their parent's sampled flag, as the SDK's default ParentBased sampler
would decide) and span limits (these spans carry a handful of attributes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from opentelemetry.sdk.trace import ReadableSpan, Tracer
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Status, StatusCode
from opentelemetry.util.types import AttributeValue

SCOPE = InstrumentationScope("mlscope.agents")
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
