"""Issue 12's claims on a real library-level ResNet-18 run: the in-code model (agents/resnet.py)
traced by an agent in this process, stored by a real `mlscope serve`, then analysed, diffed and
exported through the query API. One trace per batch size: an application span holding its model
calls."""

from __future__ import annotations

import urllib.request

import torch

from mlscope.agents import start_agent
from mlscope.agents.resnet import resnet18
from mlscope.conventions import LAYER_PATH

from tests.e2e.served_process import Served
from tests.query.perfetto_reader import read

CALLS = 2
SIDE = 32  # pixels: layer4 still gets a 1x1 map, so every layer runs; quick on two cores


def traced_runs(served: Served, batch_sizes: tuple[int, ...]) -> tuple[torch.nn.Module, dict[int, str]]:
    """Runs the model CALLS times per batch size at library level; returns it and the trace id
    of each batch size's run."""
    agent = start_agent("resnet-analysis", endpoint=f"http://127.0.0.1:{served.ports['otlp-http']}", level="library")
    net = resnet18(num_classes=10)
    model = agent.trace_model(net, name="resnet18")
    traces = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            with agent.span(f"batch {batch}") as run:
                traces[batch] = format(run.get_span_context().trace_id, "032x")
                for _ in range(CALLS):
                    model(torch.randn(batch, 3, SIDE, SIDE))
    # An export returns once the collector has made it durable: the store holds every span now.
    assert agent.shutdown()
    return net, traces


def test_analysis_diff_and_perfetto_export_of_a_library_level_resnet18(served: Served) -> None:
    net, traces = traced_runs(served, (1, 8))
    module_paths = {path for path, _ in net.named_modules()}  # "" is the model itself
    assert len(module_paths) > 60  # every module of ResNet-18 is called in its forward

    for trace_id in traces.values():
        analysis = served.get_json(f"/api/traces/{trace_id}/analysis")
        layers = {row["path"]: row for row in analysis["layers"]}
        assert set(layers) == module_paths
        assert all(row["calls"] >= CALLS and row["total_ns"] > 0 for row in layers.values())
        assert layers[""]["type"] == "ResNet18" and layers["layer1.0.conv1"]["type"] == "Conv2d"
        assert layers["layer1.0.relu"]["calls"] == 2 * CALLS  # a block calls its ReLU twice

        assert "aten::conv2d" in {op["name"] for op in analysis["op_types"]}

        # The critical path: a chain of parent and child from the trace's root down to an op.
        spans = {span["span_id"]: span for span in served.get_json(f"/api/traces/{trace_id}")["spans"]}
        path = analysis["critical_path"]
        assert spans[path[0]["span_id"]]["parent_span_id"] == ""
        assert [spans[step["span_id"]]["parent_span_id"] for step in path[1:]] == [
            step["span_id"] for step in path[:-1]]
        assert [step["level"] for step in path[:3]] == ["application", "model", "layer"]
        assert path[-1]["level"] == "library"
        assert all(spans[step["span_id"]]["level"] == "layer" for step in path[2:-1])
        assert spans[path[-2]["span_id"]]["attributes"][LAYER_PATH] in module_paths

    diff = served.get_json(f"/api/diff?a={traces[1]}&b={traces[8]}")
    assert {row["path"] for row in diff["layers"]} == module_paths
    assert all(row["a_ns"] > 0 and row["b_ns"] > 0 for row in diff["layers"])
    assert all(row["a_calls"] == row["b_calls"] >= CALLS for row in diff["layers"])
    assert (diff["a_only"], diff["b_only"]) == ([], [])

    # The same run in Perfetto's protobuf: a slice per span, at the span's nanoseconds.
    spans = served.get_json(f"/api/traces/{traces[8]}")["spans"]
    with urllib.request.urlopen(served.url(f"/api/traces/{traces[8]}/export?format=perfetto-proto"),
                                timeout=60) as response:
        slices = read(response.read()).slices  # `read` checks that every slice ends within its parent
    assert {span_id: (piece.name, piece.begin_ns, piece.end_ns) for span_id, piece in slices.items()} == {
        span["span_id"]: (span["name"], span["start_ns"], span["end_ns"]) for span in spans}
    assert {piece.categories[0] for piece in slices.values()} == {"application", "model", "layer", "library"}
