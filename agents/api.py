"""The in-process tracing API: pipeline stages and model calls as OTel spans over OTLP.

    agent = start_agent(service="my-app", level="model")
    with agent.span("load-data"):
        ...
    model = agent.trace_model(model, name="resnet18")   # each call -> a "predict" model span
    agent.shutdown()                                     # flushes to the collector

Levels above the agent's level cost one integer comparison and no span. At layer level and
deeper, a traced torch.nn.Module's calls also record their module calls and (library) profiler
ops, written as spans under the model span after each call (agents/torch_capture.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from mlscope.levels import LEVEL_ATTRIBUTE, LEVELS, parse_level

from .spans import SpanWriter

if TYPE_CHECKING:
    from .torch_capture import TorchCapture

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
AttributeValue = str | bool | int | float


def default_endpoint() -> str:
    """The collector's OTLP/HTTP base URL: OTEL_EXPORTER_OTLP_ENDPOINT, else the local default."""
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT


def default_level() -> str:
    return parse_level(os.environ.get("MLSCOPE_LEVEL") or "model")


class Agent:
    """Owns one TracerProvider exporting to one collector; spans deeper than `level` are skipped."""

    def __init__(self, provider: TracerProvider, level: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("mlscope.agents")
        self.level = parse_level(level)
        self._max_rank = LEVELS.index(self.level)

    def enabled(self, level: str) -> bool:
        return LEVELS.index(level) <= self._max_rank

    @contextlib.contextmanager
    def span(
        self, name: str, level: str = "application", attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[trace.Span | None]:
        """A span for a pipeline stage (or None when `level` is not traced); exceptions are
        recorded on the span and re-raised."""
        if not self.enabled(level):
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes={LEVEL_ATTRIBUTE: level, **(attributes or {})}) as current:
            yield current

    def trace_model(
        self,
        model: Any,
        name: str,
        framework: str = "pytorch",
        version: str = "",
        *,
        shapes: bool = False,
        nested_ops: bool = False,
    ) -> Any:
        """Wraps a callable model so each call is a `predict` model-level span.

        For a torch.nn.Module and an agent at layer level or deeper, each call also gets one
        span per module call (nested as the modules nest) and, at library level, one span per
        torch.profiler op placed under the layer that ran it (see agents/torch_capture.py).
        `shapes` adds tensor shapes to layer spans; `nested_ops` adds the ops that ops call,
        nested under them (by default only the ops that layers call directly)."""
        attributes: dict[str, AttributeValue] = {
            LEVEL_ATTRIBUTE: "model",
            "mlscope.model.name": name,
            "mlscope.framework.name": framework,
        }
        if version:
            attributes["mlscope.model.version"] = version
        capture = None
        if self.enabled("layer") and _is_torch_module(model) and isinstance(self._tracer, SdkTracer):
            from .torch_capture import CaptureOptions, TorchCapture

            options = CaptureOptions(ops=self.enabled("library"), nested_ops=nested_ops, shapes=shapes)
            capture = TorchCapture(model, root_name=name, options=options)
        return _TracedModel(self, model, attributes, capture)

    def shutdown(self) -> None:
        """Exports every finished span, then stops the exporter."""
        self._provider.force_flush()
        self._provider.shutdown()


class _TracedModel:
    """A model whose calls are `predict` spans; attribute access goes to the model."""

    def __init__(
        self, agent: Agent, model: Any, attributes: Mapping[str, AttributeValue], capture: TorchCapture | None
    ) -> None:
        self._agent = agent
        self._model = model
        self._attributes = attributes
        self._capture = capture
        self._model_name = attributes["mlscope.model.name"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        agent = self._agent
        if not agent.enabled("model"):
            return self._model(*args, **kwargs)
        # Hooks and profiler go on before the model span starts, and the span ends at the
        # model's return, not after their teardown: the span times the model, not the tracing.
        recording = self._capture.start() if self._capture is not None else None
        predict = agent._tracer.start_span("predict", attributes=self._attributes)
        predict.set_attribute("mlscope.batch_size", _batch_size(args))
        try:
            with trace.use_span(predict, end_on_exit=False, record_exception=True, set_status_on_exception=True):
                return self._model(*args, **kwargs)
        finally:
            end_ns = time.time_ns()
            if recording is not None:
                try:
                    writer = SpanWriter(agent._tracer, predict.get_span_context())
                    predict.set_attributes(self._capture.finish(recording, writer))
                except Exception:  # a tracing bug must neither fail nor mask the model call
                    log.exception("mlscope: layer/library spans of a %s call not written", self._model_name)
                end_ns = recording.end_wall_ns  # the model's end, before the profiler stopped
            predict.end(end_time=end_ns)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._model, attribute)


def _is_torch_module(model: Any) -> bool:
    """True for a torch.nn.Module, without importing torch for agents that never see one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _batch_size(args: tuple[Any, ...]) -> int:
    shape = getattr(args[0], "shape", None) if args else None
    return int(shape[0]) if shape else 0


def start_agent(
    service: str, endpoint: str | None = None, level: str | None = None, resource: Mapping[str, AttributeValue] | None = None
) -> Agent:
    """Starts an agent exporting to `endpoint` (an OTLP/HTTP base URL) at `level`."""
    base = (endpoint or default_endpoint()).rstrip("/")
    provider = TracerProvider(resource=Resource.create({"service.name": service, **(resource or {})}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
    return Agent(provider, level or default_level())
