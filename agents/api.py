"""The in-process tracing API: pipeline stages and model calls as OTel spans over OTLP.

    agent = start_agent(service="my-app", level="model")
    with agent.span("load-data"):
        ...
    model = agent.trace_model(model, name="resnet18")   # each call -> a "predict" model span
    agent.shutdown()                                     # flushes to the collector

Levels above the agent's level cost one integer comparison and no span.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from mlscope.levels import LEVEL_ATTRIBUTE, LEVELS, parse_level

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

    def trace_model(self, model: Any, name: str, framework: str = "pytorch", version: str = "") -> Any:
        """Wraps a callable model so each call is a `predict` model-level span."""
        agent = self
        attributes: dict[str, AttributeValue] = {
            "mlscope.model.name": name,
            "mlscope.framework.name": framework,
        }
        if version:
            attributes["mlscope.model.version"] = version

        class _Traced:
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                with agent.span("predict", level="model", attributes=attributes) as current:
                    if current is not None:
                        current.set_attribute("mlscope.batch_size", _batch_size(args))
                    return model(*args, **kwargs)

            def __getattr__(self, attribute: str) -> Any:
                return getattr(model, attribute)

        return _Traced()

    def shutdown(self) -> None:
        """Exports every finished span, then stops the exporter."""
        self._provider.force_flush()
        self._provider.shutdown()


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
