"""ONNX Runtime: profile parsing on a real profile, node (layer) and kernel (library) spans
placed under their runs, model spans only where profiling is off."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import onnxruntime
import pytest
import torch
from tests.agents.agent_testing import agent_at
from mlscope.agents.onnx_capture import (
    DEVICE,
    FENCE,
    KERNEL,
    OrtEvent,
    group_nodes,
    parse_profile,
    run_of,
)
from opentelemetry.sdk.trace import ReadableSpan

BATCH = 2


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    """A small CNN exported in memory (nothing cached on disk)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, 16, 16), buffer, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return buffer.getvalue()


def feed() -> dict:
    return {"x": torch.ones(BATCH, 3, 16, 16).numpy()}



def test_parse_a_real_profile(onnx_model: bytes, tmp_path: Path) -> None:
    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    session.run(None, feed())
    session.run(None, feed())
    events = json.loads(Path(session.end_profiling()).read_text())
    start_ns = session.get_profiling_start_time_ns()
    records = parse_profile(events, start_ns)
    runs = [(start_ns + e["ts"] * 1000, start_ns + (e["ts"] + e["dur"]) * 1000)
            for e in events if e["name"] == "model_run"]
    kernel_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert len(runs) == 2 and len(records) == len(kernel_events) > 0
    assert all(r.kind == KERNEL and r.provider == "CPUExecutionProvider" and r.op_type for r in records)
    assert {r.op_type for r in records} >= {"Conv", "MaxPool", "Gemm"}
    # Every node of the graph ran once per run, inside that run's model_run event.
    per_run = [[r.name for r in records if run_of(runs, (r.start_ns, r.end_ns)) == i] for i in range(2)]
    assert per_run[0] == per_run[1] and len(per_run[0]) * 2 == len(records)


def test_fences_join_their_node_and_device_kernels_are_no_nodes() -> None:
    def event(name: str, ts: int, dur: int, cat: str = "Node") -> dict:
        return {"cat": cat, "ph": "X", "name": name, "ts": ts, "dur": dur,
                "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"} if cat == "Node" else {}}

    records = parse_profile([event("conv_fence_before", 10, 1), event("conv_kernel_time", 11, 5),
                             event("conv_fence_after", 16, 1), event("sgemm_kernel", 12, 3, "Kernel"),
                             event("model_run", 0, 100, "Session")], 1_000_000)
    assert [(r.name, r.kind) for r in records] == [("conv", FENCE), ("conv", KERNEL), ("sgemm_kernel", DEVICE),
                                                   ("conv", FENCE)]
    (node,) = group_nodes(records)
    assert (node.name, node.op_type, node.start_ns, node.end_ns) == ("conv", "Conv", 1_010_000, 1_017_000)
    assert records[1] == OrtEvent("conv", "Conv", 1_011_000, 5_000, "CUDAExecutionProvider", KERNEL)


def by_parent(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    return children


def test_library_level_nodes_under_runs_and_kernels_under_nodes(onnx_model: bytes) -> None:
    agent, exporter = agent_at("library")
    session = agent.onnx_session(onnx_model, providers=["CPUExecutionProvider"], name="tiny-cnn", version="3")
    graph_nodes = None
    for _ in range(3):
        session.run(None, feed())
    agent.shutdown()
    spans = exporter.get_finished_spans()
    children = by_parent(spans)
    predicts = [s for s in spans if s.name == "predict"]
    assert len(predicts) == 3
    for predict in predicts:
        attributes = predict.attributes
        assert (attributes["mlscope.framework.name"], attributes["mlscope.framework.version"]) == (
            "onnxruntime", onnxruntime.__version__)
        assert attributes["mlscope.execution_provider"] == "CPUExecutionProvider"
        assert (attributes["mlscope.batch_size"], attributes["mlscope.model.version"]) == (BATCH, "3")
        nodes = children[predict.context.span_id]
        names = [n.name for n in nodes]
        graph_nodes = graph_nodes or names
        assert names == graph_nodes  # the same nodes each run, in execution order
        for node in nodes:
            assert node.attributes["mlscope.level"] == "layer"
            assert node.attributes["mlscope.layer.path"] == node.name and node.attributes["mlscope.layer.type"]
            assert predict.start_time <= node.start_time <= node.end_time <= predict.end_time
            (kernel,) = children[node.context.span_id]
            assert kernel.attributes["mlscope.level"] == "library"
            assert kernel.attributes["mlscope.library.provider"] == "CPUExecutionProvider"
            assert kernel.name == f"CPUExecutionProvider/{node.attributes['mlscope.layer.type']}"
    assert len(spans) == 3 * (1 + 2 * len(graph_nodes))


def test_layer_level_writes_nodes_without_kernels_after_profile_runs(onnx_model: bytes) -> None:
    agent, exporter = agent_at("layer")
    session = agent.onnx_session(onnx_model, providers=["CPUExecutionProvider"], name="tiny-cnn")
    session._capture._profile_runs = 2  # the profile is read after two runs, without waiting for shutdown
    for _ in range(3):
        session.run(None, feed())
    spans = exporter.get_finished_spans()
    levels = [s.attributes["mlscope.level"] for s in spans]
    assert levels.count("model") == 3 and "library" not in levels
    per_run = len([s for s in spans if s.attributes["mlscope.level"] == "layer"]) / 2
    assert per_run == int(per_run) > 0  # the third run came after profiling ended: model span only


def test_a_session_created_without_profiling_gets_model_spans(onnx_model: bytes,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    agent, exporter = agent_at("library")
    plain = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, "mlscope.agents.onnx_capture"):
        session = agent.trace_onnx_session(plain, name="user-made")
    assert session.run(None, feed())[0].shape == (BATCH, 10)
    agent.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["predict"]
    assert "created without profiling" in caplog.text


def test_model_level_does_not_profile(onnx_model: bytes) -> None:
    agent, exporter = agent_at("model")
    session = agent.onnx_session(onnx_model, providers=["CPUExecutionProvider"])
    assert not session.get_session_options().enable_profiling
    session.run(None, feed())
    agent.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["predict"]
