"""The deep levels' spans built, encoded and exported on a worker thread, without ReadableSpans.

At layer and library level a model call records hook events and a profiler result (agents/
torch_capture.py); turning them into spans (pairing the module calls, reading and placing the
ops, one span each) is Python work that would otherwise run on the model's thread, and writing
each as an SDK ReadableSpan that the export thread then encodes doubles it (docs/PERFORMANCE.md).
Here the model's thread only hands the ended recording over (`DeferredSpans.write_call`, O(1));
one daemon thread per agent writes the spans straight into OTLP protobuf bytes
(`EncodingSpanWriter`: a span id and one encoded message per span, nothing else; written by the
native span writer when the agent's writer is `native`, agents/native_module.py), batches them
across calls and posts them through the agent's exporter (same endpoint, HTTP client and retries
as every other span, and the same exporter decorators: agents/otlp_exporter.py). The model span
itself stays an SDK span: the worker sets its library attributes and ends it, so it is exported
after its children are written. ONNX Runtime's node and kernel spans come as jobs
(`DeferredSpans.write`) and are encoded here too.

Back-pressure: the queue of calls is the agent's memory budget for deep spans (each queued call
holds its recording). When the model's thread outruns the worker (a tight loop of small calls:
the worker shares the GIL and waits on the collector), a call that finds the queue full loses
its deep spans whole, counted per level without writing them (`Capture.span_counts`), into the
agent's SpanLoss; its model span is kept (ended at once). The deepest levels go first this way:
model spans are dropped only when the SDK's own queue stays full (span_loss.py).

The worker reads a profiler result after the next call has started a new profiler session:
tested in tests/agents/test_deferred_spans.py (the same ops, read concurrently).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import AttributeValue

from .otlp_encoder import encode_local_span, encode_request
from .otlp_exporter import EncodedSpanExporter
from .span_loss import SpanLoss, request_levels
from .spans import SCOPE, DeepSpans, RecordedCall, SpanJob, SpanSink, SpanWriterKind

log = logging.getLogger(__name__)


class EncodingSpanWriter(SpanSink[int]):
    """Writes child spans of one parent as encoded OTLP Span messages (`spans`); a span's
    context is just its span id: the trace and flags are the parent's."""

    def __init__(self, parent: SpanContext, new_span_id: Callable[[], int], native: bool = False) -> None:
        self.parent = parent.span_id
        self.spans: list[bytes] = []
        """The encoded spans: `write` appends one; the native span writer (agents/native/) adds its own."""
        self.trace_id = parent.trace_id.to_bytes(16, "big")
        self.native = native
        """The native span writer may write these spans, drawing span ids of its own (so only
        where the agent's ids are the SDK's random ones); else every id comes from `new_context`."""
        self._new_span_id = new_span_id
        self._sampled = parent.trace_flags.sampled

    @property
    def recording(self) -> bool:
        return self._sampled

    def new_context(self) -> int:
        return self._new_span_id()

    def write(
        self,
        name: str,
        context: int,
        parent: int,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue],
        error: str | None = None,
    ) -> None:
        self.spans.append(encode_local_span(self.trace_id, context, parent, name, start_ns, end_ns, attributes, error))


@dataclass(frozen=True)
class _Flush:
    """Asks the worker to export what it holds, then set `done` (and stop, if `stop`)."""

    stop: bool
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Job:
    write: SpanJob


class DeferredSpans(DeepSpans):
    """A bounded queue of calls and the daemon thread that writes and exports their spans."""

    def __init__(
        self,
        exporter: EncodedSpanExporter,
        resource: Resource,
        new_span_id: Callable[[], int],
        native: bool = False,
        max_queue_size: int = 64,
        max_export_spans: int = 4096,
        schedule_delay_s: float = 5.0,
        loss: SpanLoss | None = None,
    ) -> None:
        """`max_queue_size` calls wait at most (each holds its profiler result: memory stays
        bounded when the exporter falls behind); spans are posted once `max_export_spans` are
        pending or `schedule_delay_s` after the first of them, as the SDK's BatchSpanProcessor
        does (its defaults: 2048 queued spans, 512 a request, 5 s). `native`: torch's spans are
        written by the native span writer (see EncodingSpanWriter.native). `loss` counts the
        spans dropped here or not exported, per level."""
        self.kind = SpanWriterKind.NATIVE if native else SpanWriterKind.ENCODED
        self._native = native
        self._exporter = exporter
        self._resource = resource
        self._new_span_id = new_span_id
        self._max_export_spans = max_export_spans
        self._schedule_delay_s = schedule_delay_s
        self._queue: queue.Queue[RecordedCall | _Job | _Flush] = queue.Queue(max_queue_size)
        self._closed = False
        # Orders submits against shutdown: no call is queued behind the worker's stop request.
        self._closing = threading.Lock()
        self.dropped_calls = 0
        """Calls whose deep spans were dropped because the queue was full."""
        self.loss = loss or SpanLoss()
        self._thread = threading.Thread(target=self._run, name="mlscope-deferred-spans", daemon=True)
        self._thread.start()
        # Before the TracerProvider's own exit handler (atexit runs the last registered first),
        # so the model spans this thread ends are still exported at exit.
        atexit.register(self.shutdown)

    def write_call(self, call: RecordedCall) -> None:
        """Queues `call`. When the queue is full its deep spans are dropped (counted per level in
        `loss`, logged once) and its model span ended now; so are they once the agent has shut down."""
        with self._closing:
            if self._closed:
                call.model_span.end(end_time=call.end_ns)
                return
            try:
                self._queue.put_nowait(call)
                return
            except queue.Full:
                self.dropped_calls += 1
                first_drop = self.dropped_calls == 1
        self.loss.add(call.capture.span_counts(call.recording))
        if first_drop:
            log.warning("mlscope: layer/library spans dropped: the exporter is not keeping up")
        call.model_span.end(end_time=call.end_ns)

    def write(self, job: SpanJob) -> None:
        """Queues `job`, waiting for room (the worker never waits for this lock): a job holds many
        calls' spans (ONNX Runtime's profile) and comes rarely. Dropped once the agent has shut down."""
        with self._closing:
            if not self._closed:
                self._queue.put(_Job(job))

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Writes and exports every queued call's spans; False when `timeout_s` ran out first."""
        return self._closed or self._flush(_Flush(stop=False), timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Writes and exports every queued call's spans, then stops the worker; gives up after
        `timeout_s` (None: no limit), leaving the daemon worker to die with the process. Idempotent."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._closing:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.shutdown)
        if self._flush(_Flush(stop=True), timeout_s):
            self._thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        else:
            log.warning("mlscope: layer/library spans still queued after %.1f s: not exported", timeout_s)

    def abandon(self) -> None:
        """In the child of a fork: the worker thread is the parent's (the child has none) and the
        queue holds the parent's calls, exported by the parent. Closes without waiting for
        either, and without the lock (the parent's thread may have held it at the fork)."""
        self._closed = True
        atexit.unregister(self.shutdown)

    def _flush(self, request: _Flush, timeout_s: float | None) -> bool:
        try:
            self._queue.put(request, timeout=timeout_s)
        except queue.Full:
            return False
        return request.done.wait(timeout_s)

    def _run(self) -> None:
        pending: list[bytes] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None  # the schedule delay is up
            if isinstance(item, (RecordedCall, _Job)):
                pending += self._write_call(item) if isinstance(item, RecordedCall) else self._run_job(item)
                if deadline is None and pending:
                    deadline = time.monotonic() + self._schedule_delay_s
                if len(pending) < self._max_export_spans:
                    continue
            self._export(pending)
            pending, deadline = [], None
            if isinstance(item, _Flush):
                item.done.set()
                if item.stop:
                    return

    def _write_call(self, call: RecordedCall) -> list[bytes]:
        """The call's encoded spans; ends its model span (never raises: the worker must live)."""
        writer = EncodingSpanWriter(call.model_span.get_span_context(), self._new_span_id, self._native)
        try:
            call.model_span.set_attributes(call.capture.write_spans(call.recording, writer))
        except Exception:
            log.exception("mlscope: layer/library spans of a call not written")
        call.model_span.end(end_time=call.end_ns)
        return writer.spans

    def _run_job(self, job: _Job) -> list[bytes]:
        """The job's encoded spans, from every writer it asked for (never raises)."""
        writers: list[EncodingSpanWriter] = []

        def writer_for(parent: SpanContext) -> EncodingSpanWriter:
            writers.append(EncodingSpanWriter(parent, self._new_span_id))
            return writers[-1]

        try:
            job.write(writer_for)
        except Exception:
            log.exception("mlscope: deep spans not written")
        return [span for writer in writers for span in writer.spans]

    def _export(self, spans: list[bytes]) -> None:
        if not spans:
            return
        body = encode_request(self._resource, SCOPE, spans)
        try:
            self._exporter.export_encoded(body, len(spans))
        except Exception:
            log.exception("mlscope: layer/library spans not exported")
            self.loss.add(request_levels(body, len(spans)))
