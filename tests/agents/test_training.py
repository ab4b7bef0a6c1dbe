"""Training steps as spans (agents/training.py): a small seeded training loop on CPU, under
mlscope run's instrumentation and under the explicit `trace_training`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opentelemetry.sdk.trace import ReadableSpan
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlscope.agents.bootstrap import AutoInstrumentor
from mlscope.agents.training import trace_training
from tests.agents.agent_testing import RecordingExporter, agent_at

STEPS = 3
STEP = ["data", "forward", "loss", "optimizer.zero_grad", "backward", "optimizer.step"]


def train(model: nn.Module) -> None:
    """Three steps of a classifier: data -> forward -> loss -> zero_grad -> backward -> step."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(STEPS * 4, 6), torch.randint(0, 3, (STEPS * 4,)))
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, labels in DataLoader(data, batch_size=4, num_workers=0):
        loss = loss_function(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def model_spans(exporter: RecordingExporter) -> list[ReadableSpan]:
    spans = [span for span in exporter.get_finished_spans() if span.attributes["mlscope.level"] == "model"]
    return sorted(spans, key=lambda span: span.start_time)


@pytest.fixture
def instrumented_at_library() -> Iterator[RecordingExporter]:
    agent, exporter = agent_at("library")
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    yield exporter
    instrumentor.uninstrument()


def test_each_training_step_reads_data_forward_loss_backward_optimizer(instrumented_at_library) -> None:
    exporter = instrumented_at_library
    train(classifier())
    spans = model_spans(exporter)
    # The last `data` span is the DataLoader's end (StopIteration), an ordinary span.
    assert [span.name for span in spans] == STEP * STEPS + ["data"]
    phases = {span.name: span.attributes["mlscope.phase"] for span in spans}
    assert phases == {"data": "data", "forward": "forward", "loss": "loss", "backward": "backward",
                      "optimizer.zero_grad": "optimizer", "optimizer.step": "optimizer"}
    assert all(span.status.is_ok for span in spans)
    # A loss module is not a model: only the classifier has a model name.
    assert {span.attributes.get("mlscope.model.name") for span in spans} == {"Sequential", None}
    assert [span.attributes["mlscope.batch_size"] for span in spans if span.name == "loss"] == [4] * STEPS


def test_the_backward_ops_are_under_the_backward_span_at_library_level(instrumented_at_library) -> None:
    exporter = instrumented_at_library
    train(classifier())
    spans = exporter.get_finished_spans()
    backwards = {span.context.span_id for span in spans if span.name == "backward"}
    steps = {span.context.span_id for span in spans if span.name == "optimizer.step"}
    ops_under = {
        parent: [span.name for span in spans if span.parent is not None and span.parent.span_id == parent]
        for parent in backwards | steps
    }
    assert len(backwards) == STEPS
    for backward in backwards:
        assert any("Backward" in name or name.startswith("aten::") for name in ops_under[backward]), ops_under[backward]
    assert all(ops_under[step] for step in steps)
    # The layers of the forward stay under it, not under the training spans.
    layer_parents = {span.parent.span_id for span in spans if span.attributes["mlscope.level"] == "layer"}
    assert not layer_parents & (backwards | steps)


def test_trace_training_alone_traces_the_steps_and_uninstruments() -> None:
    agent, exporter = agent_at("model")
    originals = (torch.Tensor.backward, torch.optim.Optimizer.zero_grad, torch.optim.SGD.__dict__.get("step"))
    training = trace_training(agent)
    model = agent.trace_model(classifier(), name="classifier")
    try:
        train(model)
    finally:
        training.uninstrument()
    names = [span.name for span in model_spans(exporter)]
    assert names == ["data", "predict", "loss", "optimizer.zero_grad", "backward", "optimizer.step"] * STEPS + ["data"]
    assert (torch.Tensor.backward, torch.optim.Optimizer.zero_grad, torch.optim.SGD.__dict__.get("step")) == originals
    assert "__call__" not in vars(nn.modules.loss._Loss)
    exporter.clear()
    train(classifier())
    assert model_spans(exporter) == []
