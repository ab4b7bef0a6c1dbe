"""`mlscope run`'s bootstrap: configuration from the environment, the import hook, and the
automatic instrumentation of torch modules and ONNX Runtime sessions."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from agent_testing import agent_at
from mlscope.agents.bootstrap import (
    AUTOLOAD_DIR,
    AutoInstrumentor,
    _PostImportFinder,
    program_name,
    run_config,
    run_environment,
)
from onnx import TensorProto, helper
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from torch import nn

from mlscope.levels import UnknownLevel


@pytest.mark.parametrize("argv, name", [
    (["python", "examples/plain_torch.py", "--exit-code", "3"], "plain_torch.py"),
    (["python", "-u", "-X", "dev", "-W", "error", "app.py"], "app.py"),
    (["python", "-m", "http.server", "8000"], "http.server"),
    (["python", "-mpytest", "-q"], "pytest"),
    (["python", "-c", "print(1)"], "python -c"),
    (["python", "-uc", "print(1)"], "python -c"),
    (["python"], "python"),
    (["python", "-"], "python"),
])
def test_program_name(argv: list[str], name: str) -> None:
    assert program_name(argv) == name


def test_run_environment_prepends_the_autoload_dir_and_keeps_what_is_not_given() -> None:
    env = run_environment({"PYTHONPATH": "/mine", "MLSCOPE_LEVEL": "layer"}, endpoint="http://c:4318", service="svc")
    assert env["PYTHONPATH"].split(":") == [AUTOLOAD_DIR, "/mine"]
    assert (Path(AUTOLOAD_DIR) / "sitecustomize.py").is_file()
    assert (env["MLSCOPE_LEVEL"], env["MLSCOPE_ENDPOINT"], env["MLSCOPE_SERVICE"]) == ("layer", "http://c:4318", "svc")
    assert run_environment({}, level="library")["PYTHONPATH"] == AUTOLOAD_DIR


def test_run_config_defaults() -> None:
    config = run_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, ["python", "app.py"])
    assert (config.level, config.endpoint, config.service) == ("model", "http://x:1", "app.py")
    named = run_config({"MLSCOPE_SERVICE": "svc", "OTEL_SERVICE_NAME": "otel", "MLSCOPE_LEVEL": "Library"}, ["p"])
    assert (named.level, named.service) == ("library", "svc")
    with pytest.raises(UnknownLevel):
        run_config({"MLSCOPE_LEVEL": "kernel"}, ["p"])


def test_post_import_hook_runs_once_the_module_has_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "watched_pkg").mkdir()
    (tmp_path / "watched_pkg" / "__init__.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    finder = _PostImportFinder({"watched_pkg": lambda module: seen.append(module.VALUE)})
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module("watched_pkg")
        assert seen == [41]
        assert "exec_module" not in vars(module.__spec__.loader)  # the loader is left as it was
        importlib.import_module("watched_pkg")
        assert seen == [41]
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop("watched_pkg", None)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).relu()



@pytest.fixture
def instrumented() -> Iterator[tuple[AutoInstrumentor, InMemorySpanExporter]]:
    agent, exporter = agent_at("layer")
    instrumentor = AutoInstrumentor(agent)
    original_call, original_run = nn.Module.__call__, onnxruntime.InferenceSession.run
    instrumentor.instrument()
    instrumentor.instrument()  # idempotent: patches once
    yield instrumentor, exporter
    instrumentor.uninstrument()
    instrumentor.uninstrument()
    assert nn.Module.__call__ is original_call and onnxruntime.InferenceSession.run is original_run
    assert not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path)


def test_top_level_module_calls_are_model_spans_and_nested_ones_are_not(instrumented) -> None:
    _, exporter = instrumented
    model = Outer()
    model(torch.zeros(3, 4))
    model(torch.zeros(5, 4))
    spans = exporter.get_finished_spans()
    forwards = [span for span in spans if span.name == "forward"]
    assert [span.attributes["mlscope.batch_size"] for span in forwards] == [3, 5]
    assert all(span.attributes["mlscope.model.name"] == "Outer" for span in forwards)
    assert all(span.attributes["mlscope.level"] == "model" for span in forwards)
    layers = [(span.name, span.parent.span_id) for span in spans if span.attributes["mlscope.level"] == "layer"]
    # The nested Linear is a layer span under its model's span, not a model span of its own.
    assert {name for name, _ in layers} == {"Outer", "inner"}
    assert len(layers) == 4


def test_an_onnxruntime_session_run_is_a_model_span(instrumented, tmp_path: Path) -> None:
    _, exporter = instrumented
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"x": -np.ones((6, 3), dtype=np.float32)})
    assert output.max() == 0
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.attributes["mlscope.model.name"], span.attributes["mlscope.batch_size"]) == ("run", "relu", 6)
    assert span.attributes["mlscope.framework.name"] == "onnxruntime"
    assert span.attributes["mlscope.execution_provider"] == "CPUExecutionProvider"


def test_application_level_patches_nothing() -> None:
    agent, _ = agent_at("application")
    original = nn.Module.__call__
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    assert not instrumentor.instrumented and nn.Module.__call__ is original
