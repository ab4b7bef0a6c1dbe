"""CUDA kernels under the ops that launched them: the pure linking, and that the path stays
quiet without a GPU (bench/gpu_check.py checks it on a machine that has one)."""

from __future__ import annotations

import torch
from mlscope.agents import Agent
from mlscope.agents.torch_capture import link_device_events
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def test_kernels_link_to_their_launching_op_by_correlation_id() -> None:
    # ops with correlation ids 7, 0 (none), 9; kernels linked to 9, 7, an unknown id and none.
    assert link_device_events([7, 0, 9], [9, 7, 42, 0]) == [2, 0, -1, -1]


def test_without_a_gpu_library_level_writes_no_device_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    model = Agent(provider, "library").trace_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), name="tiny")
    model(torch.ones(2, 4))
    spans = exporter.get_finished_spans()
    assert not torch.cuda.is_available()
    assert any(s.attributes["mlscope.level"] == "library" for s in spans)
    assert not any("mlscope.library.device" in s.attributes for s in spans)
