"""Layer and library levels on real torch models: the module tree as spans, ops under layers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import torch
from mlscope.agents.spans import SpanWriterKind
from tests.agents.agent_testing import agent_at
from mlscope.agents.resnet import BasicBlock, resnet18
from mlscope.agents.call_tree import place_ops
from mlscope.agents.torch_capture import TorchCapture, _ProfilerSession, _read_ops
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from torch import nn
from torch.nn.modules import module as torch_module

# One forward of ResNet-18 calls every module once, and each BasicBlock's `relu` twice.
RESNET18_MODULE_CALLS = len(list(resnet18().named_modules())) + 8



def at_level(spans: Sequence[ReadableSpan], level: str) -> list[ReadableSpan]:
    return [span for span in spans if span.attributes["mlscope.level"] == level]


def no_global_hooks() -> bool:
    return not torch_module._global_forward_pre_hooks and not torch_module._global_forward_hooks


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return resnet18()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# Library level records ops with the native recorder on CPU, kineto on a GPU: both are checked.
OP_RECORDERS = pytest.mark.parametrize("kineto_ops", [False, True], ids=["native", "kineto"])


@pytest.fixture(scope="module", params=[False, True], ids=["native", "kineto"])
def library_spans(request: pytest.FixtureRequest, resnet: nn.Module, images: torch.Tensor) -> list[ReadableSpan]:
    agent, exporter = agent_at("library")
    model = agent.trace_model(resnet, name="resnet18", nested_ops=True, kineto_ops=request.param)
    with torch.inference_mode():
        model(images)
    return list(exporter.get_finished_spans())


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken layer")


class Guarded(nn.Module):
    """Calls a failing module and recovers, as fallback code paths in real models do."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = Failing()
        self.fallback = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.failing(x)
        except RuntimeError:
            return self.fallback(x)


def test_layer_spans_reproduce_the_module_tree(resnet: nn.Module, images: torch.Tensor) -> None:
    agent, exporter = agent_at("layer")
    model = agent.trace_model(resnet, name="resnet18")
    with torch.inference_mode():
        expected = resnet(images)
        assert torch.equal(model(images), expected)
    spans = exporter.get_finished_spans()
    (predict,) = at_level(spans, "model")
    layers = at_level(spans, "layer")
    assert len(layers) == RESNET18_MODULE_CALLS and not at_level(spans, "library")
    by_id = {span.context.span_id: span for span in spans}
    for layer in layers:
        path = layer.attributes["mlscope.layer.path"]
        parent = by_id[layer.parent.span_id]
        if path == "":
            assert parent is predict and layer.name == "resnet18"
        else:
            assert layer.name == path
            assert parent.attributes["mlscope.layer.path"] == path.rpartition(".")[0]
        assert layer.context.trace_id == predict.context.trace_id
        assert parent.start_time <= layer.start_time <= layer.end_time <= parent.end_time
        assert layer.status.is_ok
    types = {layer.attributes["mlscope.layer.path"]: layer.attributes["mlscope.layer.type"] for layer in layers}
    assert types["layer1.0.conv1"] == "Conv2d" and types["layer2.0"] == "BasicBlock"
    assert types["layer2.0.downsample"] == "Sequential" and types["fc"] == "Linear"
    relus = [layer for layer in layers if layer.name == "layer3.1.relu"]
    assert len(relus) == 2 and relus[0].end_time <= relus[1].start_time


def test_model_level_installs_no_hooks_and_writes_no_layers() -> None:
    agent, exporter = agent_at("model")

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert no_global_hooks() and not self.linear._forward_hooks and not self.linear._forward_pre_hooks
            assert not torch.autograd.profiler._is_profiler_enabled
            return self.linear(x)

    model = agent.trace_model(Probe(), name="probe")
    model(torch.zeros(3, 4))
    assert [span.name for span in exporter.get_finished_spans()] == ["predict"]


def test_library_ops_lie_inside_layer_spans(library_spans: list[ReadableSpan]) -> None:
    (predict,) = at_level(library_spans, "model")
    assert len(at_level(library_spans, "layer")) == RESNET18_MODULE_CALLS
    ops = at_level(library_spans, "library")
    by_id = {span.context.span_id: span for span in library_spans}
    inside = 0
    for op in ops:
        ancestor = by_id[op.parent.span_id]
        while ancestor.attributes["mlscope.level"] == "library":
            assert ancestor.start_time <= op.start_time and op.end_time <= ancestor.end_time
            ancestor = by_id[ancestor.parent.span_id]
        if ancestor.attributes["mlscope.level"] == "layer":
            assert ancestor.start_time <= op.start_time and op.end_time <= ancestor.end_time
            inside += 1
    assert len(ops) > 2 * RESNET18_MODULE_CALLS
    assert inside / len(ops) >= 0.99
    assert predict.attributes["mlscope.library.ops_inside_layers"] == pytest.approx(inside / len(ops))


def test_ops_land_in_the_layers_that_call_them(library_spans: list[ReadableSpan]) -> None:
    by_id = {span.context.span_id: span for span in library_spans}
    layer_of = {}
    for op in at_level(library_spans, "library"):
        parent = by_id[op.parent.span_id]
        if parent.attributes["mlscope.level"] == "layer":
            layer_of.setdefault(parent.attributes["mlscope.layer.type"], set()).add(op.name)
    assert "aten::conv2d" in layer_of["Conv2d"] and "aten::batch_norm" in layer_of["BatchNorm2d"]
    assert "aten::relu_" in layer_of["ReLU"] and "aten::linear" in layer_of["Linear"]
    assert "aten::add" in layer_of["BasicBlock"]  # the shortcut sum is the block's own op
    nested = [op for op in at_level(library_spans, "library") if op.name == "aten::convolution"]
    assert nested and all(by_id[op.parent.span_id].name == "aten::conv2d" for op in nested)


@OP_RECORDERS
def test_by_default_only_the_ops_layers_call(resnet: nn.Module, images: torch.Tensor, kineto_ops: bool) -> None:
    agent, exporter = agent_at("library")
    model = agent.trace_model(resnet, name="resnet18", kineto_ops=kineto_ops)
    with torch.inference_mode():
        model(images)
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    ops = at_level(spans, "library")
    assert ops and all(by_id[op.parent.span_id].attributes["mlscope.level"] != "library" for op in ops)
    assert sum(op.name == "aten::conv2d" for op in ops) == 20
    assert not any(op.name == "aten::convolution" for op in ops)
    (predict,) = at_level(spans, "model")
    inside = sum(by_id[op.parent.span_id].attributes["mlscope.level"] == "layer" for op in ops) / len(ops)
    assert predict.attributes["mlscope.library.ops_inside_layers"] == pytest.approx(inside) and inside >= 0.99


@OP_RECORDERS
def test_an_exception_ends_every_span_and_removes_the_hooks(kineto_ops: bool) -> None:
    agent, exporter = agent_at("library")
    model = agent.trace_model(nn.Sequential(nn.ReLU(), Failing()), name="broken", kineto_ops=kineto_ops)
    with pytest.raises(RuntimeError, match="broken layer"):
        model(torch.zeros(2))
    assert no_global_hooks() and not torch.autograd.profiler._is_profiler_enabled
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) >= {"predict", "broken", "0", "1", "aten::relu"}
    assert spans["predict"].status.status_code.name == "ERROR"
    assert spans["predict"].events[0].name == "exception"
    for name in ("broken", "1"):
        assert spans[name].status.status_code.name == "ERROR"
        assert spans[name].end_time <= spans["predict"].end_time
    assert spans["0"].status.is_ok

    exporter.clear()  # the next call starts clean: same spans as a first call, nothing carried over
    working = agent.trace_model(nn.Sequential(nn.ReLU(), nn.ReLU()), name="working")
    working(torch.zeros(2))
    assert sorted(span.name for span in at_level(exporter.get_finished_spans(), "layer")) == ["0", "1", "working"]


def test_an_exception_caught_inside_the_model_closes_the_raising_layer() -> None:
    agent, exporter = agent_at("layer")
    model = agent.trace_model(Guarded(), name="guarded")
    model(torch.ones(2))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["failing"].status.status_code.name == "ERROR"
    assert spans["failing"].end_time <= spans["fallback"].start_time
    assert spans["fallback"].parent.span_id == spans["guarded"].context.span_id
    assert spans["fallback"].status.is_ok
    assert spans["guarded"].status.is_ok and spans["predict"].status.is_ok


@pytest.mark.parametrize("writer", [SpanWriterKind.INLINE, SpanWriterKind.ENCODED])  # the Python writing code
def test_a_failure_to_write_spans_leaves_the_call_and_the_next_capture_alone(
    monkeypatch: pytest.MonkeyPatch, writer: SpanWriterKind
) -> None:
    agent, exporter = agent_at("layer", writer=writer)
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    with monkeypatch.context() as patch:
        patch.setattr(TorchCapture, "_write_layers", broken)
        assert torch.equal(model(torch.ones(2)), torch.ones(2))
        (predict,) = exporter.get_finished_spans()  # the spans are written by now, whatever the writer
    assert predict.name == "predict" and predict.status.is_ok
    model(torch.ones(2))
    assert len(at_level(exporter.get_finished_spans(), "layer")) == 2


def test_shapes_on_layer_spans_when_asked() -> None:
    agent, exporter = agent_at("layer")
    model = agent.trace_model(BasicBlock(4, 8, stride=2), name="block", shapes=True)
    model(torch.zeros(2, 4, 6, 6))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["block"].attributes["mlscope.layer.input_shapes"] == ("2x4x6x6",)
    assert spans["block"].attributes["mlscope.layer.output_shapes"] == ("2x8x3x3",)
    assert spans["conv1"].attributes["mlscope.layer.output_shapes"] == ("2x8x3x3",)


def test_the_session_reads_the_ops_torch_profiler_records(resnet: nn.Module, images: torch.Tensor) -> None:
    with torch.inference_mode():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as reference:
            resnet(images)
        before = time.time_ns()
        session = _ProfilerSession.start()
        resnet(images)
        result = session.stop()
        after = time.time_ns()
    expected = sorted(event.name() for event in reference.profiler.kineto_results.events())
    ops = _read_ops(result, session.device_activity, nested_ops=True)
    assert len(ops.names) > 2 * RESNET18_MODULE_CALLS and sorted(ops.names) == expected
    assert all(before <= start <= end <= after for start, end in ops.intervals)
    assert not session.device_activity and not ops.device_names and not ops.correlation_ids


def test_top_level_ops_are_those_no_other_op_contains(resnet: nn.Module, images: torch.Tensor) -> None:
    session = _ProfilerSession.start()
    with torch.inference_mode():
        resnet(images)
    result = session.stop()
    every_op = _read_ops(result, device_activity=False, nested_ops=True)
    outermost = place_ops([], every_op.intervals).op_parent
    ops = zip(every_op.intervals, every_op.names, outermost)
    expected = sorted((interval, name) for interval, name, parent in ops if parent < 0)
    top_level = _read_ops(result, device_activity=False, nested_ops=False)
    assert sorted(zip(top_level.intervals, top_level.names)) == expected
    assert sum(name == "aten::conv2d" for name in top_level.names) == 20 and len(expected) < len(every_op.names) / 3


def test_with_device_activity_host_ops_carry_their_correlation_ids() -> None:
    # No GPU here: the device path on host-only results gives the same ops, ids added.
    session = _ProfilerSession.start()
    nn.Sequential(nn.Linear(4, 4), nn.ReLU())(torch.ones(2, 4))
    result = session.stop()
    host_only = _read_ops(result, device_activity=False, nested_ops=True)
    with_device = _read_ops(result, device_activity=True, nested_ops=False)
    assert with_device.names == host_only.names and with_device.intervals == host_only.intervals
    assert len(set(with_device.correlation_ids)) == len(with_device.names) and min(with_device.correlation_ids) > 0
    assert not with_device.device_names and not with_device.device_intervals and not with_device.device_links


def test_a_failed_device_synchronize_still_ends_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    session = _ProfilerSession.start()
    session.device_activity = True  # as on a GPU, whose pending kernel failed

    def failed_kernel() -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(torch.cuda, "synchronize", failed_kernel)
    with pytest.raises(RuntimeError, match="device-side assert"):
        session.stop()
    assert not torch._C._autograd._profiler_enabled()


def test_a_running_profiler_leaves_kineto_the_layers_only(images: torch.Tensor) -> None:
    agent, exporter = agent_at("library")
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny", kineto_ops=True)
    with torch.profiler.profile():
        model(images)
    spans = exporter.get_finished_spans()
    assert len(at_level(spans, "layer")) == 2 and not at_level(spans, "library")


def test_the_native_recorder_runs_beside_a_running_profiler(images: torch.Tensor) -> None:
    agent, exporter = agent_at("library")
    model = agent.trace_model(nn.Sequential(nn.Conv2d(3, 4, 3)), name="tiny")
    with torch.profiler.profile() as profiler:
        model(images)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["aten::conv2d"].parent.span_id == spans["0"].context.span_id
    # The user's profile is whole: the ops conv2d calls too (the recorder mutes them when alone).
    assert {"aten::conv2d", "aten::convolution"} <= {event.name for event in profiler.events()}


def test_a_traced_model_inside_a_traced_model_is_recorded_once() -> None:
    agent, exporter = agent_at("layer")
    inner = agent.trace_model(nn.ReLU(), name="inner")
    outer = agent.trace_model(nn.Sequential(nn.Identity()), name="outer")
    outer.register_forward_hook(lambda module, args, output: inner(output))
    outer(torch.zeros(2))
    spans = exporter.get_finished_spans()
    outer_predict, inner_predict = sorted(at_level(spans, "model"), key=lambda span: span.start_time)
    assert inner_predict.parent.span_id == outer_predict.context.span_id
    layers = {span.name: span for span in at_level(spans, "layer")}
    assert sorted(layers) == ["0", "ReLU", "outer"]  # the inner model's module, by the outer capture
    assert layers["ReLU"].attributes["mlscope.layer.path"] == "?"
    assert layers["ReLU"].parent.span_id == outer_predict.context.span_id


class Sleeping(nn.Module):
    """Holds its thread inside the model call long enough for the other thread's call to run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return x


@pytest.mark.parametrize("level", ["layer", "library"])
@OP_RECORDERS
def test_calls_from_two_threads_at_once_are_each_recorded_whole(level: str, kineto_ops: bool) -> None:
    agent, exporter = agent_at(level)
    model = agent.trace_model(nn.Sequential(nn.Linear(4, 4), Sleeping(), nn.ReLU()), name="tiny", kineto_ops=kineto_ops)
    calls_per_thread = 3
    overlap = threading.Barrier(2)

    def work() -> None:
        for _ in range(calls_per_thread):
            overlap.wait()
            with torch.no_grad():
                model(torch.ones(1, 4))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = exporter.get_finished_spans()
    predicts = at_level(spans, "model")
    assert len(predicts) == 2 * calls_per_thread
    # The calls did overlap: the spans of a barrier's two calls intersect.
    first, second = sorted(predicts, key=lambda span: span.start_time)[:2]
    assert second.start_time < first.end_time
    layers = at_level(spans, "layer")
    for predict in predicts:
        roots = [span for span in layers if span.parent.span_id == predict.context.span_id]
        assert [root.name for root in roots] == ["tiny"]
        children = sorted(span.name for span in layers if span.parent.span_id == roots[0].context.span_id)
        assert children == ["0", "1", "2"]
        assert all(predict.start_time <= span.start_time and span.end_time <= predict.end_time
                   for span in layers if span.parent.span_id in (predict.context.span_id, roots[0].context.span_id))
    assert len(layers) == 2 * calls_per_thread * 4
    if level == "library":
        # Each call's Linear has its op under it (aten::linear), whichever recorder ran it.
        linears = {span.context.span_id for span in layers if span.name == "0"}
        ops_under_linears = [span for span in at_level(spans, "library") if span.parent.span_id in linears]
        assert len({span.parent.span_id for span in ops_under_linears}) == 2 * calls_per_thread
    assert not agent.dropped_spans()


def test_an_unsampled_call_writes_nothing_below_it() -> None:
    agent, exporter = agent_at("library", TracerProvider(sampler=ALWAYS_OFF))
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")
    model(torch.zeros(2))
    assert exporter.get_finished_spans() == ()
    assert no_global_hooks()


@pytest.fixture(autouse=True)
def hooks_never_leak() -> Iterator[None]:
    yield
    assert no_global_hooks() and not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_compiled_model_is_one_layer_and_dynamo_warns_of_nothing(
    backend: str, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    agent, exporter = agent_at("library")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    traced = agent.trace_model(torch.compile(model, backend=backend), name="tiny")
    with torch.no_grad():
        outputs = [traced(torch.full((3, 8), float(i))) for i in range(4)]
    assert all(torch.allclose(output, model(torch.full((3, 8), float(i)))) for i, output in enumerate(outputs))
    assert not [warning for warning in recwarn if "dynamo" in str(warning.filename) or "hook" in str(warning.message)]
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert "recompile" not in capfd.readouterr().err
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled once, never again
    spans = exporter.get_finished_spans()
    models, layers = at_level(spans, "model"), at_level(spans, "layer")
    assert len(models) == 4 and [layer.name for layer in layers] == ["tiny"] * 4
    assert {layer.parent.span_id for layer in layers} == {model.context.span_id for model in models}
    # Each call's layer lies within its model span (the timeline warns of a child outside it).
    model_of = {model.context.span_id: model for model in models}
    assert all(model_of[layer.parent.span_id].start_time <= layer.start_time
               and layer.end_time <= model_of[layer.parent.span_id].end_time for layer in layers)
    layer_ids = {layer.context.span_id for layer in layers}
    ops = at_level(spans, "library")
    assert ops and all(op.parent.span_id in layer_ids for op in ops)
    assert no_global_hooks()
