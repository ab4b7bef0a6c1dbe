"""`mlscope run` on an unmodified ONNX Runtime program, down to library level, against a real
`mlscope serve`: node spans under each session run, kernel spans under their nodes."""

from __future__ import annotations

import sys

from tests.e2e.served_process import Served
from tests.e2e.test_run import mlscope_run
from tests.e2e.test_serve import wait_for_trace

PROGRAM = "tests/e2e/plain_onnx_program.py"
NODES = {"dense1": "MatMul", "bias1": "Add", "relu1": "Relu", "dense2": "MatMul"}


def test_an_unmodified_onnxruntime_program_traced_down_to_library_level(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--level", "library", "--", sys.executable, PROGRAM, "--runs", "2")
    assert result.returncode == 0, result.stderr
    assert "enable_profiling=False" in result.stdout  # the program's own options are as it made them
    spans = wait_for_trace(served, trace_id, 1 + 2 * (1 + 2 * len(NODES)))["spans"]
    by_id = {span["span_id"]: span for span in spans}
    root = spans[0]
    assert (root["name"], root["depth"]) == ("plain_onnx_program.py", 0)
    runs = [span for span in spans if span["level"] == "model"]
    assert [(run["name"], run["parent_span_id"]) for run in runs] == [("run", root["span_id"])] * 2
    for run in runs:
        nodes = [span for span in spans if span["parent_span_id"] == run["span_id"]]
        # Graph optimizations were off in the program's options: every node runs as built.
        assert {node["name"]: node["attributes"]["mlscope.layer.type"] for node in nodes} == NODES
        assert all(node["level"] == "layer" for node in nodes)
        assert all(run["start_ns"] <= node["start_ns"] <= node["end_ns"] <= run["end_ns"] for node in nodes)
    kernels = [span for span in spans if span["level"] == "library"]
    assert len(kernels) == 2 * len(NODES)
    for kernel in kernels:
        node = by_id[kernel["parent_span_id"]]
        assert node["level"] == "layer"
        assert kernel["attributes"]["mlscope.library.provider"] == "CPUExecutionProvider"
        assert kernel["name"] == f"CPUExecutionProvider/{node['attributes']['mlscope.layer.type']}"
