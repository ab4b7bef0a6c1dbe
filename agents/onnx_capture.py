"""ONNX Runtime at model, layer and library level: each `InferenceSession.run` is a `predict`
model span; its graph nodes (layer) and their kernels with the execution provider that ran them
(library) come from ORT's own profiler.

ORT's profiler is a property of the session: it can only be switched on in the SessionOptions the
session is created with, and `end_profiling()` both hands over its events (as a JSON file) and
switches it off for good. So:
- `Agent.onnx_session(model, ...)` creates the session with profiling on when the agent's level
  needs it; a session the user created without it (`Agent.trace_onnx_session`) gets model spans
  only, said in one log line.
- Node and kernel spans of a run are written when the profile is read: after `profile_runs` runs
  (default 100; later runs get model spans only, which bounds the profile ORT keeps in memory),
  at `end_profiling()`, or at agent shutdown. Each lands under its run's predict span, by time.

Clock: event times are microsecond offsets from `get_profiling_start_time_ns()`, a wall-clock
(time.time_ns) reading, so they share the span clock; a node is assigned to the run whose predict
span contains it, and nodes that fit no run are counted on the agent's log, not guessed.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.trace import SpanContext

from mlscope.conventions import EXECUTION_PROVIDER, FRAMEWORK_VERSION, LAYER_PATH, LAYER_TYPE, LEVEL, LIBRARY_PROVIDER

from .model_spec import ModelSpec, batch_size
from .spans import SpanJob, SpanSink, WriterFor
from .call_tree import Interval, place_ops

log = logging.getLogger(__name__)

DEFAULT_PROFILE_RUNS = 100
KERNEL_SUFFIX = "_kernel_time"
_NODE_SUFFIXES = (KERNEL_SUFFIX, "_fence_before", "_fence_after")


FENCE, KERNEL, DEVICE = "fence", "kernel", "device"
"""Kinds of profiler records: a node's fences (older ORT versions record them around its
kernel), a node's kernel time, a device kernel (`Kernel` category, e.g. CUDA kernels)."""


@dataclass(frozen=True)
class OrtEvent:
    """One profiler record; `name` is the node's name (the kernel's for device kernels)."""

    name: str
    op_type: str
    start_ns: int
    dur_ns: int
    provider: str
    kind: str

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.dur_ns


def parse_profile(events: Sequence[Mapping[str, Any]], profiling_start_ns: int) -> list[OrtEvent]:
    """Node and device-kernel records of an ORT profile (the list `end_profiling()`'s JSON file
    holds), on the wall clock, in start order. Session events (model_run, ...) are left out."""
    records = []
    for event in events:
        category = event.get("cat")
        if category not in ("Node", "Kernel") or event.get("ph") != "X":
            continue
        args = event.get("args") or {}
        name = event["name"]
        kind = DEVICE
        if category == "Node":
            kind = KERNEL if name.endswith(KERNEL_SUFFIX) else FENCE
            suffix = next((s for s in _NODE_SUFFIXES if name.endswith(s)), "")
            name = name[: len(name) - len(suffix)]
        start_ns = profiling_start_ns + int(event["ts"]) * 1000
        records.append(OrtEvent(name, str(args.get("op_name", "")), start_ns, int(event["dur"]) * 1000,
                                str(args.get("provider", "")), kind))
    records.sort(key=lambda record: record.start_ns)
    return records


@dataclass(frozen=True)
class OrtNode:
    """One execution of a graph node: its fences and kernel time together."""

    name: str
    op_type: str
    provider: str
    start_ns: int
    end_ns: int


def group_nodes(records: Sequence[OrtEvent]) -> list[OrtNode]:
    """Node executions from `parse_profile`'s records: consecutive records of one node name
    (fence, kernel, fence) are one execution. Device kernels are not nodes."""
    nodes: list[OrtNode] = []
    for record in records:
        if record.kind == DEVICE:
            continue
        if nodes and nodes[-1].name == record.name and record.start_ns <= nodes[-1].end_ns + 1_000_000:
            previous = nodes[-1]
            nodes[-1] = OrtNode(previous.name, previous.op_type or record.op_type, previous.provider or record.provider,
                                previous.start_ns, max(previous.end_ns, record.end_ns))
            continue
        nodes.append(OrtNode(record.name, record.op_type, record.provider, record.start_ns, record.end_ns))
    return nodes


def run_of(runs: Sequence[Interval], interval: Interval) -> int:
    """Index of the run (sorted, disjoint intervals) containing `interval`, or -1."""
    index = bisect.bisect_right([start for start, _ in runs], interval[0]) - 1
    return index if index >= 0 and interval[1] <= runs[index][1] else -1


@dataclass(frozen=True)
class _Run:
    context: SpanContext
    start_ns: int
    end_ns: int


class OrtCapture:
    """Keeps the runs of one profiled session and writes their node and kernel spans."""

    def __init__(self, session: Any, write: Callable[[SpanJob], None], kernels: bool, profile_runs: int) -> None:
        self._session = session
        self._write_spans = write  # the agent's deep-span writer (Agent.write_deep_spans)
        self._kernels = kernels
        self._profile_runs = profile_runs
        self._runs: list[_Run] = []
        self.active = True

    def add_run(self, context: SpanContext, start_ns: int, end_ns: int) -> None:
        if not self.active:
            return
        self._runs.append(_Run(context, start_ns, end_ns))
        if len(self._runs) >= self._profile_runs:
            try:
                self.finish()
            except Exception:  # a tracing bug must neither fail nor mask the model call
                log.exception("mlscope onnxruntime: node and kernel spans not written")

    def finish(self) -> None:
        """Ends ORT's profiling, writes the spans of every run kept, deletes the profile file."""
        if not self.active:
            return
        self.active = False
        profile = self._session.end_profiling()
        if not profile:  # profiling went off behind our back: set_providers() re-created the session
            log.info("mlscope onnxruntime: the session's profiler was off at the end: no node spans")
            return
        path = Path(profile)
        try:
            events = json.loads(path.read_text())
        finally:
            path.unlink(missing_ok=True)
        profiling_start_ns = self._session.get_profiling_start_time_ns()
        runs = list(self._runs)
        self._write_spans(lambda writer_for: self._write(parse_profile(events, profiling_start_ns), runs, writer_for))

    def _write(self, records: list[OrtEvent], runs_kept: list[_Run], writer_for: WriterFor) -> None:
        runs = [(run.start_ns, run.end_ns) for run in runs_kept]
        nodes = group_nodes(records)
        per_run: list[list[OrtNode]] = [[] for _ in runs]
        outside = 0
        for node in nodes:
            index = run_of(runs, (node.start_ns, node.end_ns))
            if index < 0:
                outside += 1  # a run made on the raw session, or clock trouble
            else:
                per_run[index].append(node)
        if outside:
            log.info("mlscope onnxruntime: %d node executions outside any traced run; left out", outside)
        kernels = [record for record in records if record.kind != FENCE] if self._kernels else []
        for run, run_nodes in zip(runs_kept, per_run):
            writer = writer_for(run.context)
            if writer.recording:
                self._write_run(writer, run, run_nodes, kernels)

    def _write_run(self, writer: SpanSink[Any], run: _Run, nodes: list[OrtNode], kernels: list[OrtEvent]) -> None:
        contexts = [writer.new_context() for _ in nodes]
        for node, context in zip(nodes, contexts):
            attributes = {LEVEL: "layer", LAYER_PATH: node.name, LAYER_TYPE: node.op_type,
                          LIBRARY_PROVIDER: node.provider}
            writer.write(node.name, context, writer.parent, node.start_ns, node.end_ns, attributes)
        if not self._kernels:
            return
        mine = [k for k in kernels if run.start_ns <= k.start_ns <= run.end_ns]
        placement = place_ops([(n.start_ns, n.end_ns) for n in nodes], [(k.start_ns, k.end_ns) for k in mine])
        for kernel, layer in zip(mine, placement.layer_parent):
            parent = contexts[layer] if layer >= 0 else writer.parent
            attributes = {LEVEL: "library", LIBRARY_PROVIDER: kernel.provider, LAYER_TYPE: kernel.op_type}
            name = f"{kernel.provider}/{kernel.op_type}" if kernel.op_type else kernel.name
            writer.write(name, writer.new_context(), parent, kernel.start_ns, kernel.end_ns, attributes)


def session_attributes(session: Any) -> dict[str, str]:
    """The model-span attributes of an InferenceSession: ORT's version and the session's
    preferred execution provider (kernel spans name the provider that ran each kernel)."""
    import onnxruntime

    attributes = {FRAMEWORK_VERSION: onnxruntime.__version__}
    providers = session.get_providers()
    if providers:
        attributes[EXECUTION_PROVIDER] = providers[0]
    return attributes


class TracedOnnxSession:
    """An InferenceSession whose `run` calls are model spans (`span_name`, through the agent's
    `call_model`, as every traced model); other attributes go to the session. Made by
    `Agent.onnx_session` or `Agent.trace_onnx_session`."""

    def __init__(self, agent: Any, session: Any, name: str, version: str = "",
                 profile_runs: int = DEFAULT_PROFILE_RUNS, profile_dir: tempfile.TemporaryDirectory | None = None,
                 span_name: str = "predict") -> None:
        self._agent = agent
        self._session = session
        self._profile_dir = profile_dir  # where ORT writes the profile; removed with this object
        spec = agent.model_spec(session, name, "onnxruntime", version, span_name=span_name,
                                attributes=session_attributes(session))
        self._capture: OrtCapture | None = None
        if agent.enabled("layer"):
            if session.get_session_options().enable_profiling:
                self._capture = OrtCapture(
                    session, agent.write_deep_spans, agent.enabled("library"), profile_runs)
                spec = dataclasses.replace(spec, on_end=self._capture.add_run)
            else:
                log.info("mlscope onnxruntime: session %s was created without profiling: model spans only "
                         "(create it with agent.onnx_session for node and kernel spans)", name)
        self._spec = spec

    @property
    def spec(self) -> ModelSpec:
        """How this session's runs are traced, for callers that run the session themselves
        (`mlscope run`'s patched `InferenceSession.run`)."""
        return self._spec

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None) -> Any:
        first_input = tuple(input_feed.values())[:1]
        return self._agent.call_model(self._spec, self._session.run, (output_names, input_feed, run_options), {},
                                      batch_size(first_input))

    def end_profiling(self) -> None:
        """Writes the node and kernel spans of the profiled runs now; later runs get model spans."""
        if self._capture is not None:
            self._capture.finish()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._session, attribute)


def create_session(model: str | bytes | Path, profiling: bool, providers: Sequence[str] | None = None,
                   options: Any = None) -> tuple[Any, tempfile.TemporaryDirectory | None]:
    """An InferenceSession, with ORT's profiler on (writing into a temporary directory that
    the caller keeps alive) when `profiling`."""
    import onnxruntime

    options = options or onnxruntime.SessionOptions()
    directory = None
    if profiling:
        directory = tempfile.TemporaryDirectory(prefix="mlscope-ort-")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(directory.name) / "profile")
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, options, providers=providers), directory
