"""The native op recorder: the ops torch.profiler sees, on the clock of the layer hooks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from tests.agents.agent_testing import agent_at
from mlscope.agents import native_module
from mlscope.agents.resnet import resnet18
from mlscope.agents.call_tree import WallClockAnchor, place_ops
from mlscope.agents.torch_capture import _NativeOpsSession
from torch import nn


@pytest.fixture(scope="module")
def recorder() -> object:
    # Built by scripts/setup, which CI runs: a machine with a C++ compiler must get it.
    module = native_module.load()
    assert module is not None, "the native op recorder did not build: see the warning logged"
    return module


def test_it_records_the_ops_torch_profiler_records(recorder: object) -> None:
    model, images = resnet18(), torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as reference:
            model(images)
        before = time.perf_counter_ns()
        recorder.start(True)
        model(images)
        recorded = recorder.stop()
        after = time.perf_counter_ns()
    names, starts, ends, parents = recorded.read()
    assert len(recorded) == len(names) > 300
    assert sorted(names) == sorted(event.name() for event in reference.profiler.kineto_results.events())
    assert all(before <= start <= end <= after for start, end in zip(starts, ends))
    assert starts == sorted(starts)
    for op, parent in enumerate(parents):  # each op inside the op that called it
        assert parent < op
        if parent >= 0:
            assert starts[parent] <= starts[op] <= ends[op] <= ends[parent]
    # The parents it records are the nesting of the intervals.
    assert list(place_ops([], list(zip(starts, ends))).op_parent) == parents


def test_by_default_it_keeps_only_top_level_ops(recorder: object) -> None:
    model, images = resnet18(), torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        recorder.start(True)
        model(images)
        every = recorder.stop().read()
        recorder.start(False)
        model(images)
        names, starts, ends, parents = recorder.stop().read()
    assert names == [name for name, parent in zip(every[0], every[3]) if parent < 0]
    assert set(parents) == {-1} and names.count("aten::conv2d") == 20
    assert all(start <= end for start, end in zip(starts, ends))
    assert torch.autograd.profiler._is_profiler_enabled is False and torch._C._autograd._profiler_enabled() is False
    # RecordFunction is back on after the ops it muted: a profiler sees nested ops again.
    with torch.profiler.profile() as profiler:
        model(images)
    assert "aten::convolution" in {event.name for event in profiler.events()}


def test_it_records_the_calling_thread_only(recorder: object) -> None:
    other_ran = threading.Event()

    def other() -> None:
        torch.zeros(3).add(1)
        other_ran.set()

    ones = torch.ones(2)
    recorder.start(False)
    with torch.profiler.record_function("mlscope.label"):
        ones.mul(2)
    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    names = recorder.stop().read()[0]
    assert other_ran.is_set()
    assert names == ["mlscope.label"]  # a record_function label too, with the op inside it


def test_start_twice_or_stop_unstarted_is_an_error(recorder: object) -> None:
    recorder.start(False)
    try:
        with pytest.raises(RuntimeError, match="already recording"):
            recorder.start(False)
    finally:
        recorder.stop()
    with pytest.raises(RuntimeError, match="not recording"):
        recorder.stop()
    assert not recorder.recording()


def test_an_op_open_at_stop_ends_at_stop(recorder: object) -> None:
    recorder.start(False)
    with torch.profiler.record_function("open"):
        recorded = recorder.stop()
    (name,), (start,), (end,), _ = recorded.read()
    assert name == "open" and start <= end


def test_the_session_maps_ops_onto_the_wall_clock(recorder: object) -> None:
    ones = torch.ones(2)
    clock = WallClockAnchor.now()
    session = _NativeOpsSession.start(recorder, nested_ops=False)
    ones.add(1)
    ops = session.read(session.stop(), clock, nested_ops=False)
    ((start, end),) = ops.intervals
    assert ops.names == ["aten::add"]
    assert clock.wall_ns <= start <= end <= time.time_ns() + 1_000_000


@pytest.fixture
def unbuildable(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[None]:
    """A machine where the recorder is not built and cannot be (no compiler)."""

    def no_compiler() -> None:
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setenv("MLSCOPE_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native_module, "build", no_compiler)
    native_module.load.cache_clear()
    yield
    native_module.load.cache_clear()


def test_without_a_compiler_library_level_records_with_kineto(
    unbuildable: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlscope.agents.native_module"):
        assert native_module.load() is None
        agent, exporter = agent_at("library")
        model = agent.trace_model(nn.Sequential(nn.Linear(4, 4)), name="tiny")
        model(torch.ones(2, 4))
    assert [record.getMessage() for record in caplog.records] == [
        "mlscope's native module is unavailable (Error building extension: c++: command not found):"
        " ops are recorded with kineto, spans written in Python"
    ]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["aten::linear"].parent.span_id == spans["0"].context.span_id
