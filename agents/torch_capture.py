"""Layer and library levels for PyTorch: record while the model runs, build spans after.

Hot path (during the model call), and nothing else:
- layer: two process-wide module hooks (registered while any thread records a call) that append
  `(module, perf_counter_ns(), kind, shapes-or-None)` to a list. Global hooks, not per-module
  ones: registering two hooks per call costs next to nothing where registering two per module
  costs a fraction of a millisecond on ResNet-18 (docs/PERFORMANCE.md); the module object itself is the key, so there is no lookup and no formatting. The
  post hook is `always_call`, so a forward that raises still records its exit, as RAISE.
- library: on CPU, mlscope's native op recorder (agents/native_module.py): RecordFunction callbacks,
  torch.profiler's own source of ops, keeping a name and two perf_counter_ns readings per op on
  the calling thread. With a GPU (or where the recorder cannot be built, or `kineto_ops`): a
  kineto session (torch.profiler's engine) with CPU activity, CUDA too when available, no shapes,
  started and stopped through torch's low-level calls (`_ProfilerSession`).

After the call, off the hot path (`end` stops the recording; `write_spans` runs later, on the
agent's deferred worker thread, agents/deferred.py, where the native span writer does all of
what follows in C++ when it can, or inline): pair the hook records into the
module call tree, read the recorded ops (by default only the ops no other op called: the
roots of torch's own call tree, far cheaper than every event), place each op under the innermost
layer (or op) containing it (agents/call_tree.py) and write the spans to a SpanSink (agents/
spans.py: OTLP-encoded or ReadableSpans). Device kernels (on a GPU) go under the op that
launched them, found by kineto's correlation id (`link_device_events`).

Clocks: hook times and the native recorder's are perf_counter_ns (CLOCK_MONOTONIC), mapped to
the wall clock by one (time_ns, perf_counter_ns) pair taken at the start of the call
(call_tree.WallClockAnchor). Kineto's event times are already wall-clock ns (it converts its TSC readings to
CLOCK_REALTIME, the clock of time.time_ns), so its ops need no offset; that ops and layers land on
one clock is checked by the share of ops inside a layer span, which is reported on every predict
span (`mlscope.library.ops_inside_layers`) and tested (>= 99%).

Captures are per thread: calls from threads running at once are each recorded whole, under their
own model span. The two global hooks stay registered while any thread records (a count of the
recordings using them); each hook appends to the calling thread's own event list (a thread-local,
None on a thread not recording), and the native op recorder is thread-local too. A traced call
inside a traced call on the same thread gets its model span only: the outer call's hooks and
recorder already record its modules and ops. Kineto is process-wide, so one kineto session runs
at a time: a call that finds another thread's session running records its ops with the native
recorder instead; one that finds a torch.profiler the user started gets no ops from kineto (the
native recorder runs beside it).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch._C._autograd import _KinetoEvent, _ProfilerResult
from torch._C._profiler import _ExperimentalConfig
from torch.autograd import (
    ProfilerActivity,
    ProfilerConfig,
    ProfilerState,
    _disable_profiler,
    _enable_profiler,
    _prepare_profiler,
)
from torch.autograd.profiler import _set_is_profiler_enabled
from torch.utils.hooks import RemovableHandle

from mlscope.conventions import (
    LAYER_INPUT_SHAPES,
    LAYER_OUTPUT_SHAPES,
    LAYER_PATH,
    LAYER_TYPE,
    LEVEL,
    LIBRARY_DEVICE,
    LIBRARY_OPS_INSIDE_LAYERS,
)

from . import native_module
from .deferred import EncodingSpanWriter
from .otlp_encoder import local_span_description
from .spans import Context, SpanSink
from .call_tree import ENTER, RAISE, RETURN, CallEvent, WallClockAnchor, Interval, pair_calls, place_ops

log = logging.getLogger(__name__)

RAISED = "forward raised"



class _ThreadRecording(threading.local):
    """The calling thread's recording, read by the global hooks on every module call."""

    recording: Recording | None = None
    """The thread's recording in progress: a traced call nested in it is recorded by it."""
    events: list[CallEvent] | None = None
    """Where the hooks without shapes append this thread's module calls; None when they do not."""
    shaped_events: list[CallEvent] | None = None
    """Where the hooks with shapes append them; None when they do not."""


_THREAD_RECORDING = _ThreadRecording()
_KINETO_LOCK = threading.Lock()
"""Held by the kineto session running (one per process)."""
_HOOKS_LOCK = threading.Lock()
_hook_users: dict[bool, int] = {False: 0, True: 0}
"""Recordings in progress using the global hooks, by whether they record shapes."""
_hook_handles: dict[bool, list[RemovableHandle]] = {}


@dataclass(frozen=True)
class CaptureOptions:
    """What one traced model records below its model span."""

    layers: bool = True
    ops: bool = False
    nested_ops: bool = False
    """Also the ops that ops call (aten::conv2d -> aten::convolution -> aten::mkldnn_convolution
    -> aten::empty ...), nested under them: several times the op spans, and every profiler
    event read rather than the top-level ops only (figures in docs/PERFORMANCE.md).
    Off by default; on, it shows which kernel path ran."""
    shapes: bool = False
    """Input and output tensor shapes on layer spans (a cost per module call: docs/PERFORMANCE.md)."""
    kineto_ops: bool = False
    """Record ops with kineto even on CPU, where the native recorder would do (compared in
    bench/agent_overhead.py). With a GPU kineto records them anyway."""


@dataclass(frozen=True)
class _Module:
    name: str
    attributes: Mapping[str, str]


class Recording:
    """The state of one call being recorded; only the hooks touch it while the model runs."""

    __slots__ = ("events", "clock", "hooked_shapes", "profiler", "profiler_results", "end_perf_ns")

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self.hooked_shapes: bool | None = None
        """Which global hooks (with shapes or not) record this call; None when none do."""
        self.profiler: _ProfilerSession | _NativeOpsSession | None = None
        self.profiler_results: Any = None
        """What the profiler recorded, once `stop` has stopped it (its `read` reads it)."""
        self.clock = WallClockAnchor.now()
        self.end_perf_ns = 0

    def stop(self) -> None:
        """Ends the hot path: stamps the end, stops the thread's hooks recording (removing them
        when no other thread records), stops the profiler. Idempotent; on the recording thread."""
        if self.end_perf_ns:
            return
        self.end_perf_ns = time.perf_counter_ns()
        if self.hooked_shapes is not None:
            _unhook(self.hooked_shapes)
        if self.profiler is not None:
            self.profiler_results = self.profiler.stop()

    @property
    def end_wall_ns(self) -> int:
        return self.clock.wall(self.end_perf_ns)


class TorchCapture:
    """Records the layer and library levels of one torch model's calls and writes them as spans."""

    def __init__(self, model: nn.Module, root_name: str, options: CaptureOptions) -> None:
        self.options = options
        # Weak keys: automatic instrumentation keeps a capture per model for the model's
        # lifetime (agents/bootstrap.py); strong keys would keep every model alive forever.
        self._modules: weakref.WeakKeyDictionary[nn.Module, _Module] = weakref.WeakKeyDictionary(
            {module: _describe(path, module, root_name) for path, module in model.named_modules()}
        )
        self._warned = False
        # A torch.compile'd model is one layer: module hooks inside the compiled graph would make
        # Dynamo trace them (graph breaks, a recompile per call) and fire outside it only.
        self._compiled = model if _is_compiled(model) else None
        # Loaded (built, the first time on a machine) here, not in the first traced call. The
        # native span writer serves the deferred worker; it has no shapes (they vary per call).
        wants_recorder = options.ops and not options.kineto_ops and not torch.cuda.is_available()
        wants_writer = options.layers and not options.shapes
        native = native_module.load() if wants_recorder or wants_writer else None
        self._op_recorder = native if wants_recorder else None
        self._span_writer = self._native_span_writer(native) if native is not None and wants_writer else None

    def start(self) -> Recording | None:
        """Starts recording a call on this thread, or returns None if this thread records one
        already (the call is part of it)."""
        thread = _THREAD_RECORDING
        if thread.recording is not None:
            return None
        recording = Recording()
        thread.recording = recording
        try:
            if self.options.ops:
                recording.profiler = self._start_profiler()
            if self.options.layers and self._compiled is None:
                _hook(self.options.shapes, recording.events)
                recording.hooked_shapes = self.options.shapes
        except BaseException:
            recording.stop()
            thread.recording = None
            raise
        return recording

    def call_starts(self, recording: Recording) -> int:
        """The model call's start (wall ns, on the recording's clock), to start its model span
        with, right before the call: a compiled model's layer call starts here too. On one clock
        and one reading, the model span and its layers nest exactly (a layer stamped in `start`
        would begin before the model span, which starts after the profiler)."""
        now = time.perf_counter_ns()
        if self.options.layers and self._compiled is not None:
            recording.events.append((self._compiled, now, ENTER, None))
        return recording.clock.wall(now)

    def end(self, recording: Recording) -> None:
        """Stops `recording` (if the caller has not) and ends the capture, so the next call can
        start one; the spans are written later (`write_spans`), here or on another thread: the
        recording is the hooks' list and the profiler's result, neither touched again by torch.
        Call it exactly once for each recording `start` returned."""
        try:
            if self.options.layers and self._compiled is not None:
                # Called from the model call's `finally`: an exception unwinding it is current.
                ended = RAISE if sys.exc_info()[1] is not None else RETURN
                recording.events.append((self._compiled, time.perf_counter_ns(), ended, None))
            recording.stop()
        finally:
            _THREAD_RECORDING.recording = None

    def write_spans(self, recording: Recording, sink: SpanSink[Any]) -> dict[str, float]:
        """Writes the spans of an ended recording under `sink.parent`; returns attributes for
        that parent (the model span)."""
        if not sink.recording:
            return {}
        if (
            self._span_writer is not None
            and isinstance(sink, EncodingSpanWriter)
            and sink.native
            and (recording.profiler is None or isinstance(recording.profiler, _NativeOpsSession))
        ):
            return self._write_natively(recording, sink)
        layers = self._write_layers(recording, sink)
        if recording.profiler is None or recording.profiler_results is None:
            return {}
        ops = recording.profiler.read(recording.profiler_results, recording.clock, self.options.nested_ops)
        return {LIBRARY_OPS_INSIDE_LAYERS: self._write_ops(ops, layers, sink)}

    def span_counts(self, recording: Recording) -> dict[str, int]:
        """The spans `write_spans` would write for `recording`, per level, without writing them
        (a dropped call's loss): one layer span per module call entered; one library span per
        op recorded (the native recorder keeps only top-level ops unless `nested_ops`) and per
        device kernel. Kineto's ops are counted by reading them, as writing would."""
        layers = sum(1 for event in recording.events if event[2] == ENTER)
        results = recording.profiler_results
        if recording.profiler is None or results is None:
            return {"layer": layers}
        if isinstance(recording.profiler, _NativeOpsSession):
            return {"layer": layers, "library": len(results)}
        ops = recording.profiler.read(results, recording.clock, self.options.nested_ops)
        return {"layer": layers, "library": len(ops.names) + len(ops.device_names)}

    def _native_span_writer(self, native: ModuleType) -> Any:
        """The native writer of this model's spans, with every module's span description encoded
        once (and dropped when the module dies: its id may then be another object's)."""
        descriptions = {id(module): _encoded(described) for module, described in self._modules.items()}
        self._layer_descriptions = descriptions
        self._forget_when_dead = [
            weakref.ref(module, functools.partial(_forget, descriptions, id(module))) for module in self._modules
        ]
        # Neither function holds this capture: the C++ writer cannot take part in a reference
        # cycle the garbage collector would break.
        describe_layer = functools.partial(_describe_called, self._modules)
        return native.SpanWriter(descriptions, describe_layer, _describe_op)

    def _write_natively(self, recording: Recording, sink: EncodingSpanWriter) -> dict[str, float]:
        """`write_spans` by the native writer: the same spans, with ids of its own."""
        ops = recording.profiler_results if recording.profiler is not None else None
        spans, inside = self._span_writer.write(
            recording.events,
            recording.end_perf_ns,
            recording.clock.offset_ns,
            ops,
            self.options.nested_ops,
            sink.trace_id,
            sink.parent,
        )
        sink.spans += spans
        return {} if inside is None else {LIBRARY_OPS_INSIDE_LAYERS: inside}

    def _start_profiler(self) -> _ProfilerSession | _NativeOpsSession | None:
        """A started op recorder, or None (logged once) when none can run: the call then goes on
        with its layers only, never fails because of tracing."""
        if self._op_recorder is not None:
            return _NativeOpsSession.start(self._op_recorder, self.options.nested_ops)
        # The C++ flag, not torch.profiler's Python one: it also covers the legacy profiler.
        # Set by another thread's session too, which is not the user's.
        if torch._C._autograd._profiler_enabled() and not _KINETO_LOCK.locked():
            self._warn_once("torch.profiler is already running: no library level while it does")
            return None
        try:
            session = _ProfilerSession.start()
        except Exception:
            log.exception("torch.profiler did not start: no library level for this call")
            return None
        if session is not None:
            return session
        # Another thread's call holds the one kineto session: this call's ops (host side only:
        # kernels need kineto) come from the thread-local native recorder.
        recorder = native_module.load()
        if recorder is None:
            self._warn_once("calls from two threads at once and no native op recorder: no library level")
            return None
        return _NativeOpsSession.start(recorder, self.options.nested_ops)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    def _write_layers(self, recording: Recording, writer: SpanSink[Context]) -> list[tuple[Interval, Context]]:
        """Writes one span per module call; returns each call's wall interval and span context."""
        clock = recording.clock
        calls = pair_calls(recording.events, recording.end_perf_ns)
        contexts = [writer.new_context() for _ in calls]
        written = []
        for call, context in zip(calls, contexts):
            module = self._modules.get(call.key) or _describe_foreign(call.key)
            attributes = module.attributes
            if self.options.shapes:
                attributes = {**attributes, **_shape_attributes(call.enter_payload, call.exit_payload)}
            interval = (clock.wall(call.start_ns), clock.wall(call.end_ns))
            parent = contexts[call.parent] if call.parent >= 0 else writer.parent
            writer.write(module.name, context, parent, *interval, attributes, RAISED if call.failed else None)
            written.append((interval, context))
        return written

    def _write_ops(self, ops: ProfiledOps, layers: list[tuple[Interval, Context]], writer: SpanSink[Context]) -> float:
        """Writes the op spans, then the device kernels under the op that launched them;
        returns the share of ops inside a layer span."""
        names, intervals = ops.names, ops.intervals
        placement = place_ops([interval for interval, _ in layers], intervals)
        keep = [self.options.nested_ops or parent < 0 for parent in placement.op_parent]
        contexts = [writer.new_context() if kept else None for kept in keep]
        for op, (name, (start, end)) in enumerate(zip(names, intervals)):
            if not keep[op]:
                continue
            layer, parent_op = placement.layer_parent[op], placement.op_parent[op]
            parent = layers[layer][1] if layer >= 0 else contexts[parent_op] if parent_op >= 0 else writer.parent
            writer.write(name, contexts[op], parent, start, end, _OP_ATTRIBUTES)
        for name, (start, end), launcher in zip(
            ops.device_names, ops.device_intervals, link_device_events(ops.correlation_ids, ops.device_links)
        ):
            # Under the launching op, or its nearest ancestor that got a span (nested ops are
            # off by default); a kernel runs later than its launch, so it is placed by id, not time.
            while launcher >= 0 and contexts[launcher] is None:
                launcher = placement.op_parent[launcher]
            parent = contexts[launcher] if launcher >= 0 else writer.parent
            writer.write(name, writer.new_context(), parent, start, end, _DEVICE_ATTRIBUTES)
        return placement.fraction_inside


_OP_ATTRIBUTES: Mapping[str, str] = {LEVEL: "library"}
_DEVICE_ATTRIBUTES: Mapping[str, str] = {LEVEL: "library", LIBRARY_DEVICE: "cuda"}


def _encoded(module: _Module) -> tuple[bytes, bytes]:
    """A module's span description for the native writer: as it returned, and as it raised."""
    return (
        local_span_description(module.name, module.attributes),
        local_span_description(module.name, module.attributes, RAISED),
    )


def _forget(descriptions: dict[int, tuple[bytes, bytes]], key: int, _: object) -> None:
    descriptions.pop(key, None)


def _describe_called(modules: Mapping[nn.Module, _Module], module: nn.Module) -> tuple[bytes, bytes]:
    """The description of a module the native writer did not find (called from outside the tree)."""
    return _encoded(modules.get(module) or _describe_foreign(module))


def _describe_op(name: str) -> bytes:
    return local_span_description(name, _OP_ATTRIBUTES)


def _describe(path: str, module: nn.Module, root_name: str) -> _Module:
    kind = type(module).__name__
    attributes = {LEVEL: "layer", LAYER_PATH: path, LAYER_TYPE: kind}
    return _Module(path or root_name or kind, attributes)


def _is_compiled(model: nn.Module) -> bool:
    """`torch.compile(model)`'s wrapper (without importing Dynamo for models that are not)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def _describe_foreign(module: nn.Module) -> _Module:
    """A module called during the model call that is not in the model's tree (built inside a
    forward, or another model called from a hook): named by its type, path "?"."""
    kind = type(module).__name__
    return _Module(kind, {LEVEL: "layer", LAYER_PATH: "?", LAYER_TYPE: kind})


def _hook(shapes: bool, events: list[CallEvent]) -> None:
    """Makes the global hooks (with shapes or not) append this thread's module calls to
    `events`, registering them if no other thread's recording has."""
    if shapes:
        _THREAD_RECORDING.shaped_events = events
    else:
        _THREAD_RECORDING.events = events
    with _HOOKS_LOCK:
        _hook_users[shapes] += 1
        if _hook_users[shapes] == 1:
            pre, post = (_pre_with_shapes, _post_with_shapes) if shapes else (_pre, _post)
            _hook_handles[shapes] = [
                register_module_forward_pre_hook(pre),
                register_module_forward_hook(post, always_call=True),
            ]


def _unhook(shapes: bool) -> None:
    """Stops the global hooks recording this thread; removes them once no thread's recording
    uses them."""
    if shapes:
        _THREAD_RECORDING.shaped_events = None
    else:
        _THREAD_RECORDING.events = None
    with _HOOKS_LOCK:
        _hook_users[shapes] -= 1
        if _hook_users[shapes] == 0:
            for handle in _hook_handles.pop(shapes):
                handle.remove()


# The global hooks. They run on every module call of every thread while registered, so they do
# the least possible: read the thread's event list, append a tuple. torch calls an always_call
# hook with output None when forward raised; only then (or when a forward returns None) is the
# exception state looked at.
_clock = time.perf_counter_ns
_exception = sys.exc_info


def _ended_without_output() -> int:
    return RAISE if _exception()[1] is not None else RETURN


def _pre(module: nn.Module, args: Any) -> None:
    events = _THREAD_RECORDING.events
    if events is not None:
        events.append((module, _clock(), ENTER, None))


def _post(module: nn.Module, args: Any, output: Any) -> None:
    events = _THREAD_RECORDING.events
    if events is not None:
        events.append((module, _clock(), RETURN if output is not None else _ended_without_output(), None))


def _pre_with_shapes(module: nn.Module, args: Any) -> None:
    events = _THREAD_RECORDING.shaped_events
    if events is not None:
        events.append((module, _clock(), ENTER, _shapes(args)))


def _post_with_shapes(module: nn.Module, args: Any, output: Any) -> None:
    events = _THREAD_RECORDING.shaped_events
    if events is not None:
        events.append((module, _clock(), RETURN if output is not None else _ended_without_output(), _shapes(output)))


def _shapes(value: Any) -> list[torch.Size]:
    """The shapes of the tensors in a forward's arguments or output (torch.Size is an immutable
    tuple: keeping it holds no tensor alive)."""
    if isinstance(value, torch.Tensor):
        return [value.shape]
    if isinstance(value, (tuple, list)):
        return [item.shape for item in value if isinstance(item, torch.Tensor)]
    return []


def _shape_attributes(
    inputs: list[torch.Size] | None, outputs: list[torch.Size] | None
) -> dict[str, tuple[str, ...]]:
    attributes = {}
    for key, shapes in ((LAYER_INPUT_SHAPES, inputs), (LAYER_OUTPUT_SHAPES, outputs)):
        if shapes is not None:
            attributes[key] = tuple("x".join(map(str, shape)) for shape in shapes)
    return attributes


@dataclass(frozen=True)
class ProfiledOps:
    """The profiler's host-side ops and device-side events (CUDA kernels, memcpys), each device
    event with the correlation id of the op that launched it. The ops' own correlation ids are
    read only when there are device events to link (empty otherwise)."""

    names: list[str]
    intervals: list[Interval]
    correlation_ids: list[int]
    device_names: list[str]
    device_intervals: list[Interval]
    device_links: list[int]


def link_device_events(correlation_ids: Sequence[int], device_links: Sequence[int]) -> list[int]:
    """For each device event, the index of the host op whose correlation id it links to, or -1.
    Kineto links a kernel to the op that launched it by id: time cannot, the kernel runs
    asynchronously after its launch, often after the launching layer has returned."""
    index = {correlation: op for op, correlation in enumerate(correlation_ids) if correlation > 0}
    return [index.get(link, -1) if link > 0 else -1 for link in device_links]


def _read_ops(results: _ProfilerResult, device_activity: bool, nested_ops: bool) -> ProfiledOps:
    """Names and wall-clock intervals of the profiler's host-side and device-side events: all of
    them, or only the ops no other op called when that is all that gets a span (`nested_ops` off)
    and no device event needs the ops they link to."""
    if not (device_activity or nested_ops):
        return _read_top_level_ops(results)
    # Read a column at a time, mapping each accessor over the events (no Python loop body per
    # field), and without device types or correlation ids when no device was profiled.
    events = results.events()
    if device_activity:
        host = torch.autograd.DeviceType.CPU
        host_events = [event for event in events if event.device_type() == host]
        device_events = [event for event in events if event.device_type() != host]
        correlation_ids = list(map(_KinetoEvent.correlation_id, host_events))
    else:
        host_events, device_events, correlation_ids = events, [], []
    names, intervals = _names_and_intervals(host_events)
    device_names, device_intervals = _names_and_intervals(device_events)
    device_links = list(map(_KinetoEvent.linked_correlation_id, device_events))
    return ProfiledOps(names, intervals, correlation_ids, device_names, device_intervals, device_links)


def _read_top_level_ops(results: _ProfilerResult) -> ProfiledOps:
    """The ops no other op called: the roots of the call tree torch builds from each thread's op
    stack when the profiler stops (a fraction of the events, the same ops as those no other op's
    interval contains). Reading only them skips materializing every event as a pybind object,
    and placing fewer ops saves as much again (docs/PERFORMANCE.md)."""
    roots = results.experimental_event_tree()
    intervals = [(root.start_time_ns, root.end_time_ns) for root in roots]
    return ProfiledOps([root.name for root in roots], intervals, [], [], [], [])


def _names_and_intervals(events: Sequence[_KinetoEvent]) -> tuple[list[str], list[Interval]]:
    starts = map(_KinetoEvent.start_ns, events)
    return list(map(_KinetoEvent.name, events)), list(zip(starts, map(_KinetoEvent.end_ns, events)))


_PROFILER_CONFIG = ProfilerConfig(
    ProfilerState.KINETO,
    report_input_shapes=False,
    profile_memory=False,
    with_stack=False,
    with_flops=False,
    with_modules=False,
    experimental_config=_ExperimentalConfig(),
)
"""torch.profiler.profile's defaults: kineto without shapes, memory, stacks, flops or modules."""
_HOST_ACTIVITIES = {ProfilerActivity.CPU}
_HOST_AND_DEVICE_ACTIVITIES = {ProfilerActivity.CPU, ProfilerActivity.CUDA}


class _NativeOpsSession:
    """The native op recorder (agents/native_module.py) recording the calling thread's ops."""

    __slots__ = ("_recorder",)

    def __init__(self, recorder: ModuleType) -> None:
        self._recorder = recorder

    @classmethod
    def start(cls, recorder: ModuleType, nested_ops: bool) -> _NativeOpsSession:
        recorder.start(nested_ops)
        return cls(recorder)

    def stop(self) -> Any:
        """The recorded ops, still in C++: turned into Python objects only by `read`."""
        return self._recorder.stop()

    @staticmethod
    def read(recorded: Any, clock: WallClockAnchor, nested_ops: bool) -> ProfiledOps:
        """The ops recorded (only top-level ones unless it was started with `nested_ops`) on
        the wall clock."""
        names, starts, ends, _ = recorded.read()
        offset = clock.offset_ns
        intervals = [(start + offset, end + offset) for start, end in zip(starts, ends)]
        return ProfiledOps(names, intervals, [], [], [], [])


class _ProfilerSession:
    """One kineto session (started holding _KINETO_LOCK, released by `stop`), run by the calls torch.profiler.profile makes underneath
    (torch/autograd/profiler.py: prepare, enable, disable; the same session, the same events).
    Not the wrapper itself: its per-call set-up (a profile object, a trace id, inductor and
    distributed probes) cost more than half of its start (docs/PERFORMANCE.md)."""

    __slots__ = ("device_activity",)

    def __init__(self, device_activity: bool) -> None:
        self.device_activity = device_activity
        """CUDA is profiled too: the results hold device events."""

    @classmethod
    def start(cls) -> _ProfilerSession | None:
        """A started session, or None while another thread's runs (kineto is one per process)."""
        if not _KINETO_LOCK.acquire(blocking=False):
            return None
        device_activity = torch.cuda.is_available()
        activities = _HOST_AND_DEVICE_ACTIVITIES if device_activity else _HOST_ACTIVITIES
        try:
            _prepare_profiler(_PROFILER_CONFIG, activities)  # needed before every enable
            _enable_profiler(_PROFILER_CONFIG, activities)
        except BaseException:
            _KINETO_LOCK.release()
            raise
        # torch's Python-side flag, set as torch.profiler sets it: compiled code reads it to
        # decide whether to emit its record_function labels.
        _set_is_profiler_enabled(True)
        return cls(device_activity)

    def stop(self) -> _ProfilerResult:
        try:
            if self.device_activity:
                torch.cuda.synchronize()  # as torch.profiler does: kernels still queued would be missing
        finally:  # even when that raised (a failed kernel): a session left on blocks every later one
            try:
                _set_is_profiler_enabled(False)
                result = _disable_profiler()
            finally:
                _KINETO_LOCK.release()
        return result

    def read(self, results: _ProfilerResult, clock: WallClockAnchor, nested_ops: bool) -> ProfiledOps:
        """The session's ops (already on the wall clock: `clock` is not needed)."""
        return _read_ops(results, self.device_activity, nested_ops)
