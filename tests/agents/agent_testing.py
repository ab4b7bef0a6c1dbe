"""Shared by the agent tests: an Agent whose spans land in memory."""

from __future__ import annotations

from mlscope.agents import Agent
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def agent_at(level: str, provider: TracerProvider | None = None) -> tuple[Agent, InMemorySpanExporter]:
    """An agent at `level` exporting synchronously to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = provider or TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Agent(provider, level), exporter
