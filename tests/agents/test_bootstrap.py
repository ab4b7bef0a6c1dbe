"""`mlscope run`'s bootstrap: configuration from the environment, the import hook, and the
automatic instrumentation of torch modules and ONNX Runtime sessions."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from tests.agents.agent_testing import agent_at
from mlscope.agents.bootstrap import AutoInstrumentor, _outlived, _PostImportFinder, process_span_name
from mlscope.agents.run_config import AUTOLOAD_DIR, program_name, run_config, run_environment
from onnx import TensorProto, helper
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from torch import nn

from mlscope.conventions import UnknownLevel


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


SPAWN_MAIN = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
              "--multiprocessing-fork"]
COMPILE_WORKER = ["python", "/venv/torch/_inductor/compile_worker/__main__.py", "--kind=fork", "--workers=4"]


@pytest.mark.parametrize("command, script_argv, multiprocessing_name, dataloader_worker, name", [
    (["python", "app.py"], ["app.py"], "MainProcess", None, "app.py"),
    (["python", "app.py"], ["app.py"], None, None, "app.py"),  # multiprocessing never imported
    (["python", "app.py"], ["app.py"], "ForkPoolWorker-2", None, "ForkPoolWorker-2"),  # forked: the parent's argv
    (SPAWN_MAIN, ["app.py"], "SpawnPoolWorker-1", None, "SpawnPoolWorker-1"),  # not `python -c`
    (SPAWN_MAIN, ["app.py"], "SpawnProcess-1", 1, "DataLoader worker 1"),
    (["python", "train.py"], ["train.py"], "Process-3", 0, "DataLoader worker 0"),
    (COMPILE_WORKER, COMPILE_WORKER[1:], "MainProcess", None, "torch.compile worker"),
    (COMPILE_WORKER, COMPILE_WORKER[1:], "ForkProcess-2", None, "torch.compile worker (ForkProcess-2)"),
    (SPAWN_MAIN, COMPILE_WORKER[1:], "SpawnProcess-1", None, "torch.compile worker (SpawnProcess-1)"),
    (["python", "-m", "torch._inductor.compile_worker", "--workers=2"], ["x"], "MainProcess", None,
     "torch.compile worker"),
    (["python", "-c", "from multiprocessing.resource_tracker import main;main(9)"], ["-c"], "MainProcess", None,
     "multiprocessing.resource_tracker"),
    (["python", "-c", "print(1)"], ["-c"], "MainProcess", None, "python -c"),
])
def test_a_process_span_says_what_the_process_is(command: list[str], script_argv: list[str],
                                                  multiprocessing_name: str | None, dataloader_worker: int | None,
                                                  name: str) -> None:
    assert process_span_name(command, script_argv, multiprocessing_name, dataloader_worker) == name


def test_a_process_has_outlived_its_parent_once_the_parent_has_exited() -> None:
    assert not _outlived(os.getppid())
    # The launcher starts a child and exits at once; the child, re-parented by then, says so.
    child = ("import sys, time; time.sleep(1); "
             "from mlscope.agents.bootstrap import _outlived; print(_outlived(int(sys.argv[1])))")
    launcher = f"import os, subprocess, sys; subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])"
    result = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, "True\n"), result.stderr

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
    session_class = onnxruntime.InferenceSession
    originals = nn.Module.__call__, session_class.run, session_class.__init__
    instrumentor.instrument()
    instrumentor.instrument()  # idempotent: patches once
    yield instrumentor, exporter
    instrumentor.uninstrument()
    instrumentor.uninstrument()
    assert (nn.Module.__call__, session_class.run, session_class.__init__) == originals
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


def relu_sigmoid_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("Sigmoid", ["h"], ["y"], name="sigmoid")],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feed(batch: int = 6) -> dict[str, np.ndarray]:
    return {"x": -np.ones((batch, 3), dtype=np.float32)}


CPU = ["CPUExecutionProvider"]


def test_an_onnxruntime_session_run_is_a_model_span(instrumented, tmp_path: Path) -> None:
    _, exporter = instrumented
    path = tmp_path / "relu.onnx"
    onnx.save(relu_sigmoid_model(), path)
    session = onnxruntime.InferenceSession(str(path), providers=CPU)
    (output,) = session.run(None, feed())
    assert output.max() == 0.5
    (span,) = exporter.get_finished_spans()  # node spans come once the profile is read
    assert (span.name, span.attributes["mlscope.model.name"], span.attributes["mlscope.batch_size"]) == ("run", "relu", 6)
    assert span.attributes["mlscope.framework.name"] == "onnxruntime"
    assert span.attributes["mlscope.execution_provider"] == "CPUExecutionProvider"


def test_deeper_levels_profile_sessions_with_the_users_options_left_as_they_were() -> None:
    agent, exporter = agent_at("library")
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    try:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.profile_file_prefix = "users-prefix"
        session = onnxruntime.InferenceSession(relu_sigmoid_model().SerializeToString(), options, providers=CPU)
        assert (options.enable_profiling, options.profile_file_prefix) == (False, "users-prefix")
        used = session.get_session_options()  # the session's own copy: the user's settings, profiling on
        assert used.enable_profiling and used.graph_optimization_level == options.graph_optimization_level
        profile_dir = Path(used.profile_file_prefix).parent
        assert profile_dir.is_dir()
        session.run(None, feed(2))
        session.run(None, feed(2))
        never_run = onnxruntime.InferenceSession(relu_sigmoid_model().SerializeToString(), providers=CPU)
        assert never_run.get_session_options().enable_profiling
    finally:
        instrumentor.uninstrument()  # reads the profiles, then removes their directory
    assert not profile_dir.exists()
    spans = exporter.get_finished_spans()
    runs = {span.context.span_id: span for span in spans if span.name == "run"}
    nodes = {span.context.span_id: span for span in spans if span.attributes["mlscope.level"] == "layer"}
    kernels = [span for span in spans if span.attributes["mlscope.level"] == "library"]
    assert len(runs) == 2 and len(nodes) == 4 and len(kernels) == 4
    assert sorted(node.name for node in nodes.values()) == ["relu", "relu", "sigmoid", "sigmoid"]
    assert all(node.parent.span_id in runs for node in nodes.values())
    for kernel in kernels:
        node = nodes[kernel.parent.span_id]
        assert kernel.name == f"CPUExecutionProvider/{node.attributes['mlscope.layer.type']}"
        assert kernel.attributes["mlscope.library.provider"] == "CPUExecutionProvider"


def test_a_session_the_user_profiles_keeps_its_profile(instrumented, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    _, exporter = instrumented
    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "mine")
    with caplog.at_level(logging.INFO, "mlscope.agents.bootstrap"):
        session = onnxruntime.InferenceSession(relu_sigmoid_model().SerializeToString(), options, providers=CPU)
    assert "profiles this session itself" in caplog.text
    session.run(None, feed())
    instrumented[0].uninstrument()  # what happens at exit: their profiler is left running
    profile = Path(session.end_profiling())
    assert profile.parent == tmp_path and profile.name.startswith("mine")
    assert {event["name"] for event in json.loads(profile.read_text())} >= {"relu_kernel_time", "sigmoid_kernel_time"}
    assert [span.name for span in exporter.get_finished_spans()] == ["run"]


def test_model_level_leaves_session_creation_alone() -> None:
    agent, exporter = agent_at("model")
    original_init = onnxruntime.InferenceSession.__init__
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    try:
        assert onnxruntime.InferenceSession.__init__ is original_init
        session = onnxruntime.InferenceSession(relu_sigmoid_model().SerializeToString(), providers=CPU)
        assert not session.get_session_options().enable_profiling
        session.run(None, feed())
    finally:
        instrumentor.uninstrument()
    assert [span.name for span in exporter.get_finished_spans()] == ["run"]


def test_application_level_patches_nothing() -> None:
    agent, _ = agent_at("application")
    original = nn.Module.__call__
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    assert not instrumentor.instrumented and nn.Module.__call__ is original


def test_a_compiled_model_is_named_after_the_model_it_compiled(instrumented, recwarn: pytest.WarningsRecorder) -> None:
    _, exporter = instrumented
    compiled = torch.compile(Outer(), backend="eager")
    for batch in (2, 2, 2):
        compiled(torch.zeros(batch, 4))
    forwards = [span for span in exporter.get_finished_spans() if span.name == "forward"]
    assert [span.attributes["mlscope.model.name"] for span in forwards] == ["Outer"] * 3
    assert {span.attributes["mlscope.phase"] for span in forwards} == {"forward"}
    assert not [str(warning.message) for warning in recwarn if "hook" in str(warning.message)]
