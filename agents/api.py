"""The in-process tracing API: pipeline stages and model calls as OTel spans over OTLP.

    agent = start_agent(service="my-app", level="model")
    with agent.span("load-data"):
        ...
    model = agent.trace_model(model, name="resnet18")   # each call -> a "predict" model span
    agent.shutdown()                                     # flushes to the collector

Levels above the agent's level cost one integer comparison and no span. At layer level and
deeper, a traced torch.nn.Module's calls also record their module calls and (library) profiler
ops, written as spans under the model span after each call (agents/torch_capture.py), and an ONNX
Runtime session's profile gives node and kernel spans (agents/onnx_capture.py). Both go through
the agent's one deep-span writer (agents/spans.py `DeepSpans`), chosen once by `start_agent` and
named in its Resource (`mlscope.agent.writer`): by default the deferred worker thread, which also
ends the model span (agents/deferred.py), so they are exported once `force_flush` or `shutdown`
returns; inline, through the provider's processors, only when asked for.

Spans leave an agent through two queues on two threads: the SDK's BatchSpanProcessor (pipeline
stages, model spans) and the deferred worker (deep spans), both posting through the one exporter.
Why not one: model and stage spans are the SDK's own spans, ended wherever the program ends them,
and the SDK hands them to every processor a user adds; the worker handles only what mlscope
writes itself. The store joins a trace by ids, so the order in which the two queues deliver a
model span and its children does not matter. Both are bounded (MODEL_QUEUE_SPANS, the deferred
worker's queue of calls); what they drop, and what the collector refuses, is counted per level
(`Agent.dropped_spans`, agents/span_loss.py).

A model called from a thread with no current span of its own (a thread the program started)
gets `default_parent` as its parent: under `mlscope run` the process span, so every thread's
calls join the run's trace; each model span names its thread (`thread.id`, `thread.name`).

`trace_model` and `mlscope run`'s automatic instrumentation (agents/bootstrap.py) share one code
path: `Agent.model_spec` describes a model once, `Agent.call_model` traces each call of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from mlscope.conventions import (
    AGENT_SCOPE,
    AGENT_WRITER,
    BATCH_SIZE,
    FRAMEWORK_NAME,
    LEVEL,
    LEVELS,
    MODEL_NAME,
    MODEL_VERSION,
    SERVICE_NAME,
    THREAD_ID,
    THREAD_NAME,
    agent_level,
    collector_endpoint,
    parse_level,
)

from . import native_build, propagation
from .deferred import DeferredSpans
from .otlp_exporter import DeliveryWatch, EncodedSpanExporter, FastOTLPSpanExporter
from .model_spec import AttributeValue, ModelSpec, batch_size
from .onnx_capture import TracedOnnxSession, create_session
from .resource import stack_attributes
from .span_loss import CountingBatchSpanProcessor, SpanLoss
from .spans import DeepSpans, InlineSpans, RecordedCall, SpanJob, SpanWriterKind, writer_kind

if TYPE_CHECKING:

    from .hardware import HardwareSampler

log = logging.getLogger(__name__)

default_endpoint = collector_endpoint
"""The collector's OTLP/HTTP base URL from the environment (the name mlscope.agents exports)."""


_IN_MODEL_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("mlscope_in_model_call", default=False)


in_model_call: Callable[[], bool] = _IN_MODEL_CALL.get
"""True while a traced model call runs in this context: a model called from inside another one
is part of it, which is how automatic instrumentation tells top-level calls apart. The bound
method itself, not a function calling it: it runs on every torch module call when patched."""


FAILING_SHUTDOWN_S = 1.0
"""Shutdown's deadline once the collector refused or missed the agent's last export."""

MODEL_QUEUE_SPANS = 8192
"""The SDK spans (stages, model spans) an agent holds for export at most: a few MB, and enough
for the model spans of a tight loop of small calls while one export is on its way."""
EXPORT_BATCH_SPANS = 2048
"""SDK spans a request at most: mlscope's encoder writes them in a few ms, and fewer, larger
requests are what keeps the export thread ahead of a tight loop (far below the collector's
request size limit)."""


class Agent:
    """Owns one TracerProvider exporting to one collector; spans deeper than `level` are skipped.
    Its layer and library spans are written by `deep_spans` (the agent's writer for its whole
    life): by default inline, through the provider's processors; `start_agent` gives it the
    deferred worker (agents/deferred.py)."""

    def __init__(
        self,
        provider: TracerProvider,
        level: str,
        sampler: HardwareSampler | None = None,
        deep_spans: DeepSpans | None = None,
        *,
        exporter: EncodedSpanExporter | None = None,
        rebuild: Callable[[], AgentParts] | None = None,
        loss: SpanLoss | None = None,
    ) -> None:
        """`exporter`: the provider's span exporter, shut down first when a shutdown runs out of
        time (it stops its retries). `rebuild`: makes a fresh provider, exporter, writer and
        sampler, for the child of a fork (see `_after_fork_in_child`); without it, a forked
        child keeps the parent's (only correct when nothing is traced there). `loss`: where
        the exporter and writer count what they do not deliver."""
        self.level = parse_level(level)
        self._max_rank = LEVELS.index(self.level)
        self._use(AgentParts(provider, exporter, deep_spans, sampler, loss))
        self._rebuild = rebuild
        self._shut_down = False
        self.default_parent: otel_context.Context | None = None
        """The parent of model spans and stages started where no span is current (a thread
        the program started); None: they are roots of their own traces."""
        if rebuild is not None:
            weak_reset = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (reset := weak_reset()) and reset())

    def _use(self, parts: AgentParts) -> None:
        self._provider = parts.provider
        self._exporter = parts.exporter
        self._tracer = parts.provider.get_tracer(AGENT_SCOPE)
        self._deep_spans = parts.deep_spans or InlineSpans(self._tracer)
        self._loss = parts.loss or SpanLoss()
        self._processor = parts.processor
        # At hardware level: samples taken at each model span's ends give its mlscope.hw.* figures.
        self._sampler = parts.sampler if self.enabled("hardware") else None
        self._onnx_sessions: weakref.WeakSet[TracedOnnxSession] = weakref.WeakSet()

    def _after_fork_in_child(self) -> None:
        """Runs in the child of `os.fork` (a fork-based multiprocessing worker, a DataLoader
        worker): only the forking thread lives on, so the parent's export threads (the SDK's
        batch processor, the deferred worker, the hardware sampler) are gone, their locks may be
        held and their queues hold the parent's spans. The child gets its own provider (its
        Resource names the child's pid), exporter (its own HTTP connections), writer and sampler;
        the parent's are dropped without exporting anything of the parent's. The SDK's batch
        processor re-initialises itself in a child (empty queue, new thread): shut down here."""
        if self._rebuild is None or self._shut_down:  # a stopped agent stays stopped: no threads for it
            return
        old_provider, old_deep_spans = self._provider, self._deep_spans
        old_deep_spans.abandon()
        try:
            self._use(self._rebuild())
        except Exception:  # the child must run on: untraced is better than broken
            log.exception("mlscope: tracing not restarted in a forked process")
            self._max_rank = -1
            return
        try:
            old_provider.shutdown()
        except Exception:
            log.debug("mlscope: the parent's provider not shut down in the forked child", exc_info=True)

    def enabled(self, level: str) -> bool:
        return LEVELS.index(level) <= self._max_rank

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        level: str = "application",
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        context: otel_context.Context | None = None,
    ) -> Iterator[trace.Span | None]:
        """A span for a pipeline stage (or None when `level` is not traced); exceptions are
        recorded on the span and re-raised. `context` gives a remote parent (see
        span_from_headers); by default the parent is the current span."""
        if not self.enabled(level):
            yield None
            return
        with self._tracer.start_as_current_span(
            name, context=context or self._parent_here(), kind=kind, attributes={LEVEL: level, **(attributes or {})}
        ) as current:
            yield current

    def _parent_here(self) -> otel_context.Context | None:
        """The context a span started here descends from: the current one (None) when this
        thread has a current span, else `default_parent`."""
        if self.default_parent is None or trace.get_current_span().get_span_context().is_valid:
            return None
        return self.default_parent

    def start_span(
        self,
        name: str,
        level: str = "application",
        attributes: Mapping[str, AttributeValue] | None = None,
        context: otel_context.Context | None = None,
    ) -> trace.Span:
        """A span the caller ends, for lifetimes no `with` block encloses (a whole process)."""
        return self._tracer.start_span(name, context=context, attributes={LEVEL: level, **(attributes or {})})

    def inject_headers(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        """Adds the current span's W3C trace context (`traceparent`, `tracestate`) to outgoing
        HTTP request headers, so the server's spans join this trace; returns `headers`."""
        return propagation.inject_headers(headers)

    def span_from_headers(
        self,
        name: str,
        headers: Mapping[str, str],
        level: str = "application",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> contextlib.AbstractContextManager[trace.Span | None]:
        """A server span for a request, the child of the client span named by its headers (a
        root when they carry no trace context)."""
        return self.span(
            name, level, attributes, kind=trace.SpanKind.SERVER, context=propagation.extract_headers(headers)
        )

    def trace_model(
        self,
        model: Any,
        name: str,
        framework: str = "pytorch",
        version: str = "",
        *,
        shapes: bool = False,
        nested_ops: bool = False,
        kineto_ops: bool = False,
    ) -> Any:
        """Wraps a callable model so each call is a `predict` model-level span.

        For a torch.nn.Module and an agent at layer level or deeper, each call also gets one
        span per module call (nested as the modules nest) and, at library level, one span per
        torch.profiler op placed under the layer that ran it (see agents/torch_capture.py).
        `shapes` adds tensor shapes to layer spans; `nested_ops` adds the ops that ops call,
        nested under them (by default only the ops that layers call directly). `kineto_ops`
        records ops with torch.profiler's kineto even on CPU, where mlscope's native recorder is
        cheaper (agents/native_module.py); with a GPU kineto records them anyway."""
        spec = self.model_spec(
            model, name, framework, version, shapes=shapes, nested_ops=nested_ops, kineto_ops=kineto_ops
        )
        return _TracedModel(self, model, spec)

    def model_spec(
        self,
        model: Any,
        name: str,
        framework: str = "pytorch",
        version: str = "",
        *,
        span_name: str = "predict",
        attributes: Mapping[str, AttributeValue] | None = None,
        shapes: bool = False,
        nested_ops: bool = False,
        kineto_ops: bool = False,
    ) -> ModelSpec:
        """Describes `model` once for `call_model` (see trace_model for the arguments);
        `attributes` are added to every model span. Building a torch capture walks the module
        tree, so callers keep the spec for the model's lifetime rather than per call."""
        model_attributes: dict[str, AttributeValue] = {
            LEVEL: "model",
            MODEL_NAME: name,
            FRAMEWORK_NAME: framework,
            **(attributes or {}),
        }
        if version:
            model_attributes[MODEL_VERSION] = version
        capture = None
        if self.enabled("layer") and _is_torch_module(model) and isinstance(self._tracer, SdkTracer):
            from .torch_capture import CaptureOptions, TorchCapture  # imports torch: only for torch models

            options = CaptureOptions(
                ops=self.enabled("library"), nested_ops=nested_ops, shapes=shapes, kineto_ops=kineto_ops
            )
            capture = TorchCapture(model, root_name=name, options=options)
        return ModelSpec(span_name, model_attributes, capture)

    def call_model(
        self, spec: ModelSpec, call: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], batch_size: int
    ) -> Any:
        """Calls `call(*args, **kwargs)` as one model span described by `spec`, with the deeper
        levels its capture records; returns what the call returns, raises what it raises."""
        if not self.enabled("model"):
            return call(*args, **kwargs)
        capture = spec.capture
        # Hooks and profiler go on before the model span starts, and the span ends at the
        # model's return, not after their teardown: the span times the model, not the tracing.
        recording = capture.start() if capture is not None else None
        if self._sampler is not None:
            self._sampler.sample_now()
        start_ns = capture.call_starts(recording) if recording is not None else None
        model_span = self._tracer.start_span(spec.span_name, context=self._parent_here(), attributes=spec.attributes,
                                             start_time=start_ns)
        model_span.set_attributes({BATCH_SIZE: batch_size, THREAD_ID: threading.get_ident(),
                                   THREAD_NAME: threading.current_thread().name})
        inside = _IN_MODEL_CALL.set(True)
        try:
            with trace.use_span(model_span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
                return call(*args, **kwargs)
        finally:
            _IN_MODEL_CALL.reset(inside)
            end_ns = time.time_ns()
            if recording is not None:
                try:
                    capture.end(recording)
                except Exception:  # a tracing bug must neither fail nor mask the model call
                    log.exception("mlscope: capture of a %s call not ended", spec.span_name)
                    recording = None
                else:
                    # The model's end, before the profiler stopped, on the capture's clock that
                    # stamped the start (`call_starts`).
                    end_ns = recording.end_wall_ns
            if self._sampler is not None:
                model_span.set_attributes(self._sampler.span_attributes(model_span.start_time, end_ns))
            # An unsampled model span (no SDK span) has no deep spans to write.
            if recording is not None and isinstance(model_span, SdkSpan):
                self._deep_spans.write_call(RecordedCall(capture, recording, model_span, end_ns))
            else:
                model_span.end(end_time=end_ns)
            if spec.on_end is not None:
                spec.on_end(model_span.get_span_context(), model_span.start_time, end_ns)

    @property
    def writer(self) -> SpanWriterKind:
        """How this agent writes its deep spans (its resource's `mlscope.agent.writer` when
        `start_agent` built it)."""
        return self._deep_spans.kind

    def write_deep_spans(self, job: SpanJob) -> None:
        """Runs `job` with the agent's writer, for deep spans under model spans already ended
        (ONNX Runtime's profile): on the writer's thread, exported with the rest."""
        self._deep_spans.write(job)

    def onnx_session(
        self,
        model: str | bytes | os.PathLike[str],
        providers: list[str] | None = None,
        *,
        name: str | None = None,
        version: str = "",
        options: Any = None,
    ) -> TracedOnnxSession:
        """Creates an onnxruntime.InferenceSession whose `run` calls are model spans; at layer
        level and deeper it is created with ORT's profiler on, which gives node (layer) and
        kernel (library) spans. `options` (SessionOptions) are changed to turn profiling on."""
        session, profile_dir = create_session(model, self.enabled("layer"), providers, options)
        default_name = os.path.splitext(os.path.basename(model))[0] if isinstance(model, (str, os.PathLike)) else "onnx-model"
        return self.trace_onnx_session(session, name or default_name, version, _profile_dir=profile_dir)

    def trace_onnx_session(self, session: Any, name: str, version: str = "", *, span_name: str = "predict",
                           _profile_dir: Any = None) -> TracedOnnxSession:
        """Wraps an existing InferenceSession so its `run` calls are model spans named
        `span_name`. ORT's profiler can only be switched on when a session is created: node and
        kernel spans need a session created with SessionOptions.enable_profiling (see onnx_session)."""
        traced = TracedOnnxSession(self, session, name, version, profile_dir=_profile_dir, span_name=span_name)
        self._onnx_sessions.add(traced)
        return traced

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Hands every span the provider ends to `processor` as well as to the exporter: with
        the inline writer the deep spans too; with the deferred worker's only the SDK spans
        (stages, model spans). To see every span on every writer, decorate the exporter
        (`start_agent(wrap_exporter=...)`, agents/otlp_exporter.py ExporterDecorator)."""
        self._provider.add_span_processor(processor)

    def resource_attributes(self) -> dict[str, Any]:
        """The Resource every span of this agent carries (service, process, HW/SW stack)."""
        return dict(self._provider.resource.attributes)

    @property
    def collector_failing(self) -> bool:
        """The agent's last export failed (`start_agent`'s agents; False for others)."""
        return isinstance(self._exporter, DeliveryWatch) and self._exporter.failing

    @property
    def undelivered_spans(self) -> int:
        """Spans not delivered so far: dropped under load or not taken by the collector."""
        return self._loss.total

    def dropped_spans(self) -> dict[str, int]:
        """`undelivered_spans` per level (only levels that lost any)."""
        return self._loss.counts()

    def unconfirmed_spans(self) -> dict[str, int]:
        """Spans neither delivered nor counted lost yet, per level: those waiting in the export
        queue or in an export the collector has not answered (`start_agent`'s agents). What a
        shutdown cut short leaves: the deep levels' are counted by then (`DeferredSpans` gives up
        on what it still holds; its exports in flight are the exporter's)."""
        counts: Counter[str] = Counter(self._processor.queued() if self._processor is not None else {})
        if isinstance(self._exporter, DeliveryWatch):
            counts.update(self._exporter.in_flight())
        return dict(counts)

    def flush_deep_spans(self, timeout_s: float) -> bool:
        """Writes and exports every queued call's deep spans (ending their model spans), so
        what they lost is counted; False when `timeout_s` ran out first (at most
        FAILING_SHUTDOWN_S once the collector is failing)."""
        if self.collector_failing:
            timeout_s = min(timeout_s, FAILING_SHUTDOWN_S)
        return self._deep_spans.force_flush(timeout_s)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Exports every finished span now; False when `timeout_millis` ran out first. The
        deep-span writer goes first: it ends model spans, which the provider then exports."""
        deadline = time.monotonic() + timeout_millis / 1e3
        if not self._deep_spans.force_flush(timeout_millis / 1e3):
            return False
        return self._provider.force_flush(max(int((deadline - time.monotonic()) * 1e3), 0))

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Writes the spans ONNX Runtime's profilers still hold, stops the hardware sampler
        (exporting its last samples), exports every finished span, then stops the exporter, all
        within `timeout_s`: once it runs out, what is still queued is dropped (the exporter is
        shut down first, which ends its retries). False when something was left undelivered."""
        self._shut_down = True
        if self.collector_failing:  # the last export failed: waiting for retries would not help
            timeout_s = min(timeout_s, FAILING_SHUTDOWN_S)
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        for session in list(self._onnx_sessions):
            session.end_profiling()
        if self._sampler is not None:
            self._sampler.stop(left())
        self._deep_spans.shutdown(left())
        flushed = self._provider.force_flush(int(left() * 1e3))
        if not flushed and self._exporter is not None:
            self._exporter.shutdown()  # its retries stop; the provider's shutdown then drops the rest
        self._provider.shutdown()
        return flushed


@dataclasses.dataclass(frozen=True)
class AgentParts:
    """What an Agent exports with: built by `start_agent`, and again in a forked child."""

    provider: TracerProvider
    exporter: EncodedSpanExporter | None = None
    deep_spans: DeepSpans | None = None
    sampler: HardwareSampler | None = None
    loss: SpanLoss | None = None
    """Where the exporter, the processor and the writer count what they do not deliver."""
    processor: CountingBatchSpanProcessor | None = None
    """The provider's export queue (stages, model spans), when it is one whose content can be counted."""


class _TracedModel:
    """A model whose calls are model spans; attribute access goes to the model."""

    def __init__(self, agent: Agent, model: Any, spec: ModelSpec) -> None:
        self._agent = agent
        self._model = model
        self._spec = spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._agent.call_model(self._spec, self._model, args, kwargs, batch_size(args))

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._model, attribute)


def _is_torch_module(model: Any) -> bool:
    """True for a torch.nn.Module, without importing torch for agents that never see one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def choose_writer(level: str, id_generator: IdGenerator, requested: SpanWriterKind | None = None) -> SpanWriterKind:
    """The deep-span writer of an agent at `level` whose provider draws ids from `id_generator`:
    `requested`, else what is available (spans.writer_kind); a native writer asked for where the
    native module is not built is the encoded one."""
    deep_levels = LEVELS.index(parse_level(level)) >= LEVELS.index("layer")
    native_built = deep_levels and native_build.is_built()
    random_ids = type(id_generator) is RandomIdGenerator  # exactly the SDK's: the native writer draws its own
    chosen = requested or writer_kind(deep_levels, native_built, random_ids)
    return SpanWriterKind.ENCODED if chosen is SpanWriterKind.NATIVE and not native_built else chosen


def deep_span_writer(
    level: str, provider: TracerProvider, exporter: EncodedSpanExporter, writer: SpanWriterKind | None = None,
    loss: SpanLoss | None = None,
) -> DeepSpans | None:
    """The deep-span writer start_agent gives an agent at `level` exporting to `exporter`
    (`writer` as choose_writer decides it), counting what it drops in `loss`; None for the
    inline one (Agent's default)."""
    chosen = choose_writer(level, provider.id_generator, writer)
    if chosen is SpanWriterKind.INLINE:
        return None
    return DeferredSpans(exporter, provider.resource, provider.id_generator.generate_span_id,
                         native=chosen is SpanWriterKind.NATIVE, loss=loss)


def start_agent(
    service: str, endpoint: str | None = None, level: str | None = None, resource: Mapping[str, AttributeValue] | None = None,
    wrap_exporter: Callable[[FastOTLPSpanExporter], EncodedSpanExporter] | None = None,
    writer: SpanWriterKind | None = None,
) -> Agent:
    """Starts an agent exporting to `endpoint` (an OTLP/HTTP base URL; default: the environment's,
    conventions.collector_endpoint) at `level` (default: MLSCOPE_LEVEL, else model). Its Resource
    describes the HW/SW stack (agents/resource.py) and its deep-span writer; `resource` adds to or
    overrides it. `wrap_exporter` may decorate the OTLP span exporter (ExporterDecorator: e.g. to
    count spans the collector refused); every span of every writer goes through it. `writer`
    forces a deep-span writer; by default the deferred worker, native where it is built."""
    base = (endpoint or collector_endpoint()).rstrip("/")
    level = parse_level(level) if level else agent_level()

    def build() -> AgentParts:  # once here, and again in the child of a fork (Agent._after_fork_in_child)
        provider_ids = RandomIdGenerator()
        chosen = choose_writer(level, provider_ids, writer)
        attributes = {**stack_attributes(), SERVICE_NAME: service, **(resource or {}), AGENT_WRITER: chosen.value}
        provider = TracerProvider(resource=Resource.create(attributes), id_generator=provider_ids)
        loss = SpanLoss()
        exporter: EncodedSpanExporter = FastOTLPSpanExporter(endpoint=f"{base}/v1/traces", on_rejected=loss.refused)
        if wrap_exporter is not None:
            exporter = wrap_exporter(exporter)
        watch = exporter = DeliveryWatch(exporter, loss)
        processor = CountingBatchSpanProcessor(exporter, loss, MODEL_QUEUE_SPANS, EXPORT_BATCH_SPANS,
                                               failing=lambda: watch.failing)
        provider.add_span_processor(processor)
        deep_spans = deep_span_writer(level, provider, exporter, chosen, loss)
        sampler = None
        if level == LEVELS[-1]:  # hardware
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            from .hardware import HardwareSampler

            sampler = HardwareSampler(OTLPMetricExporter(endpoint=f"{base}/v1/metrics"), provider.resource)
            sampler.start()
        return AgentParts(provider, exporter, deep_spans, sampler, loss, processor)

    parts = build()
    return Agent(parts.provider, level, parts.sampler, parts.deep_spans, exporter=parts.exporter, rebuild=build,
                 loss=parts.loss)
