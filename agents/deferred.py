"""The deep levels' spans built and encoded on a worker thread, exported by others.

At layer and library level a model call records hook events and a profiler result (agents/
torch_capture.py); turning them into spans (pairing the module calls, reading and placing the
ops, one span each) is Python work that would otherwise run on the model's thread, and writing
each as an SDK ReadableSpan that the export thread then encodes doubles it (docs/PERFORMANCE.md).
Here the model's thread only hands the ended recording over (`DeferredSpans.write_call`, O(1));
one daemon thread per agent writes the spans straight into OTLP protobuf bytes
(`EncodingSpanWriter`: a span id and one encoded message per span, nothing else; written by the
native span writer when the agent's writer is `native`, agents/native_module.py) and hands them
to the agent's `SpanOutbox`, whose export threads batch them across calls and post them through
the agent's exporter (same endpoint, HTTP client and retries as every other span, and the same
exporter decorators: agents/otlp_exporter.py). Writing never waits for the network: the
collector answers once the spans are durable, which takes far longer than writing them, so
several exports run at once (the collector coalesces them) and a batch grows while they are in
flight. The model span itself stays an SDK span: the worker sets its library attributes and
ends it. ONNX Runtime's node and kernel spans come as jobs (`DeferredSpans.write`) and are
encoded here too.

Back-pressure, deepest level first and a whole call at a time, every loss counted per level in
the agent's SpanLoss (and logged once): the outbox holds at most `budget_bytes` of encoded spans,
pending or in flight. Once it is LIBRARY_SHARE full a call keeps its layer spans but loses its
library ones; once it is full a call loses all its deep spans, counted without writing them
(`Capture.span_counts`). A call that finds the queue of calls full (the model's thread outruns
the writer itself) loses its deep spans the same way. Model spans are kept: they are dropped
only when the SDK's own queue stays full (span_loss.py). An agent shut down before its outbox
is empty counts what it could not send.

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


LIBRARY_SHARE = 0.75
"""How full the outbox may be before calls lose their library spans (keeping their layer spans):
the last quarter of the budget is kept for layer spans."""


@dataclass(frozen=True)
class _Flush:
    """Asks the worker to hand over what it holds and wait, until `deadline` (a monotonic time;
    None: no limit), for the outbox to export it; then set `done` (and stop, if `stop`)."""

    stop: bool
    deadline: float | None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Job:
    write: SpanJob


def _levels(spans: list[bytes]) -> dict[str, int]:
    return request_levels(b"".join(spans), len(spans))


class SpanOutbox:
    """Encoded spans waiting for export or in flight, at most about `budget_bytes` of them, and
    the `exporters` daemon threads that post them with `export`. A thread posts once
    `max_export_spans` are pending, `schedule_delay_s` after the oldest pending span came, or at
    once while draining; it takes what is pending, up to `max_request_bytes` a request, so
    batches grow while the other threads' exports are in flight."""

    def __init__(
        self,
        export: Callable[[list[bytes]], None],
        budget_bytes: int,
        max_export_spans: int,
        max_request_bytes: int,
        schedule_delay_s: float,
        exporters: int,
    ) -> None:
        self.budget_bytes = budget_bytes
        self._export = export
        self._max_export_spans = max_export_spans
        self._max_request_bytes = max_request_bytes
        self._schedule_delay_s = schedule_delay_s
        self._ready = threading.Condition()
        self._pending: list[bytes] = []
        self._held_bytes = 0
        """Bytes pending or in flight: what counts against the budget."""
        self._in_flight = 0
        self._oldest_pending_at: float | None = None
        self._draining = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"mlscope-span-export-{index}", daemon=True)
            for index in range(exporters)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def fullness(self) -> float:
        """The share of the budget held (may pass 1 by one call's spans)."""
        return self._held_bytes / self.budget_bytes

    def add(self, spans: list[bytes]) -> None:
        if not spans:
            return
        size = sum(map(len, spans))
        with self._ready:
            self._pending += spans
            self._held_bytes += size
            if self._oldest_pending_at is None:
                self._oldest_pending_at = time.monotonic()
            if len(self._pending) >= self._max_export_spans:
                self._ready.notify()

    def drain(self, deadline: float | None) -> bool:
        """Exports everything pending now, and waits for every export in flight to end; False
        when `deadline` (monotonic; None: none) came first."""
        with self._ready:
            self._draining += 1
            self._ready.notify_all()
            try:
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                return self._ready.wait_for(lambda: not self._pending and not self._in_flight, timeout)
            finally:
                self._draining -= 1

    def stop(self) -> list[bytes]:
        """Stops the export threads once their exports in flight end; returns the spans still
        pending, which will not be sent."""
        with self._ready:
            self._stopping = True
            unsent, self._pending = self._pending, []
            self._held_bytes -= sum(map(len, unsent))
            self._ready.notify_all()
        return unsent

    def _due(self) -> bool:
        return bool(self._pending) and (
            self._draining > 0
            or len(self._pending) >= self._max_export_spans
            or time.monotonic() >= (self._oldest_pending_at or 0.0) + self._schedule_delay_s
        )

    def _take(self) -> tuple[list[bytes], int]:
        """The oldest pending spans, up to `max_request_bytes` (at least one)."""
        size = taken = 0
        for span in self._pending:
            if taken and size + len(span) > self._max_request_bytes:
                break
            size += len(span)
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        if not self._pending:
            self._oldest_pending_at = None
        return batch, size

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._due():
                    if self._stopping:
                        return
                    due_at = None if self._oldest_pending_at is None else self._oldest_pending_at + self._schedule_delay_s
                    self._ready.wait(None if due_at is None else max(due_at - time.monotonic(), 0.0))
                batch, size = self._take()
                self._in_flight += 1
            try:
                self._export(batch)
            finally:
                with self._ready:
                    self._in_flight -= 1
                    self._held_bytes -= size
                    self._ready.notify_all()


class DeferredSpans(DeepSpans):
    """A bounded queue of calls, the daemon thread that writes their spans and the outbox that
    exports them."""

    def __init__(
        self,
        exporter: EncodedSpanExporter,
        resource: Resource,
        new_span_id: Callable[[], int],
        native: bool = False,
        max_queue_size: int = 512,
        max_export_spans: int = 4096,
        schedule_delay_s: float = 5.0,
        loss: SpanLoss | None = None,
        budget_bytes: int = 32 * 2**20,
        max_request_bytes: int = 4 * 2**20,
        exporters: int = 4,
    ) -> None:
        """`max_queue_size` calls wait to be written at most (each holds its profiler result);
        `budget_bytes` of encoded spans wait to be exported or are in flight at most (see the
        module's docstring for what is dropped beyond). Spans are posted once `max_export_spans`
        are pending or `schedule_delay_s` after the first of them, as the SDK's BatchSpanProcessor
        does (its defaults: 2048 queued spans, 512 a request, 5 s), up to `max_request_bytes` a
        request (the collector takes 16 MiB), by up to `exporters` exports at once. `native`:
        torch's spans are written by the native span writer (see EncodingSpanWriter.native).
        `loss` counts the spans dropped here or not exported, per level."""
        self.kind = SpanWriterKind.NATIVE if native else SpanWriterKind.ENCODED
        self._native = native
        self._exporter = exporter
        self._resource = resource
        self._new_span_id = new_span_id
        self._queue: queue.Queue[RecordedCall | _Job | _Flush] = queue.Queue(max_queue_size)
        self._closed = False
        # Orders submits against shutdown: no call is queued behind the worker's stop request.
        self._closing = threading.Lock()
        self.dropped_calls = 0
        """Calls that lost deep spans (all of them, or their library spans) to back-pressure."""
        self.loss = loss or SpanLoss()
        self._outbox = SpanOutbox(self._export, budget_bytes, max_export_spans, max_request_bytes, schedule_delay_s, exporters)
        self._thread = threading.Thread(target=self._run, name="mlscope-deferred-spans", daemon=True)
        self._thread.start()
        # Before the TracerProvider's own exit handler (atexit runs the last registered first),
        # so the model spans this thread ends are still exported at exit.
        atexit.register(self.shutdown)

    def write_call(self, call: RecordedCall) -> None:
        """Queues `call`. When the queue is full its deep spans are dropped (counted per level in
        `loss`) and its model span ended now; so are they once the agent has shut down."""
        with self._closing:
            if self._closed:
                call.model_span.end(end_time=call.end_ns)
                return
            try:
                self._queue.put_nowait(call)
                return
            except queue.Full:
                pass
        self._drop_call(call)

    def write(self, job: SpanJob) -> None:
        """Queues `job`, waiting for room (the worker never waits for this lock): a job holds many
        calls' spans (ONNX Runtime's profile) and comes rarely. Dropped once the agent has shut down."""
        with self._closing:
            if not self._closed:
                self._queue.put(_Job(job))

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Writes and exports every queued call's spans; False when `timeout_s` ran out first."""
        return self._closed or self._flush(_Flush(stop=False, deadline=time.monotonic() + timeout_s), timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Writes and exports every queued call's spans, then stops the worker; gives up after
        `timeout_s` (None: no limit), counting as lost what is still queued or pending (and
        ending the queued calls' model spans), leaving the daemon threads to die with the
        process. Idempotent."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._closing:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.shutdown)
        if self._flush(_Flush(stop=True, deadline=deadline), timeout_s):
            self._thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            return
        log.warning("mlscope: layer/library spans still queued after %.1f s: not exported", timeout_s)
        self._give_up()

    def abandon(self) -> None:
        """In the child of a fork: the worker and export threads are the parent's (the child has
        none) and the queues hold the parent's calls, exported by the parent. Closes without
        waiting for either, and without the locks (the parent's threads may have held them at the fork)."""
        self._closed = True
        atexit.unregister(self.shutdown)

    def _flush(self, request: _Flush, timeout_s: float | None) -> bool:
        try:
            self._queue.put(request, timeout=timeout_s)
        except queue.Full:
            return False
        return request.done.wait(timeout_s)

    def _give_up(self) -> None:
        """Counts what is still queued or pending as lost; the queued calls' model spans end."""
        unsent = self._outbox.stop()
        if unsent:
            self.loss.add(_levels(unsent))
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, RecordedCall):
                self.loss.add(item.capture.span_counts(item.recording))
                item.model_span.end(end_time=item.end_ns)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, RecordedCall):
                self._write_call(item)
            elif isinstance(item, _Job):
                self._outbox.add(self._admitted(self._run_job(item), self._outbox.fullness))
            else:
                drained = self._outbox.drain(item.deadline)
                if item.stop and drained:
                    self._outbox.stop()
                if drained:
                    item.done.set()
                if item.stop:
                    return

    def _note_drop(self) -> None:
        self.dropped_calls += 1
        if self.dropped_calls == 1:
            log.warning("mlscope: layer/library spans dropped: the exporter is not keeping up")

    def _drop_call(self, call: RecordedCall) -> None:
        """Counts the call's deep spans as lost without writing them and ends its model span."""
        self._note_drop()
        try:
            self.loss.add(call.capture.span_counts(call.recording))
        finally:
            call.model_span.end(end_time=call.end_ns)

    def _admitted(self, spans: list[bytes], fullness: float) -> list[bytes]:
        """What of `spans` (one call's or job's) an outbox `fullness` full takes: all of them,
        all but the library spans, or none; the rest is counted as lost."""
        if fullness < LIBRARY_SHARE:
            return spans
        kept: list[bytes] = []
        lost: list[bytes] = []
        for span in spans:
            deep = fullness >= 1.0 or "library" in request_levels(span, 1)
            (lost if deep else kept).append(span)
        if lost:
            self._note_drop()
            self.loss.add(_levels(lost))
        return kept

    def _write_call(self, call: RecordedCall) -> None:
        """Writes the call's spans into the outbox as the budget allows; ends its model span
        (never raises: the worker must live)."""
        fullness = self._outbox.fullness
        if fullness >= 1.0:
            self._drop_call(call)
            return
        writer = EncodingSpanWriter(call.model_span.get_span_context(), self._new_span_id, self._native)
        try:
            call.model_span.set_attributes(call.capture.write_spans(call.recording, writer))
        except Exception:
            log.exception("mlscope: layer/library spans of a call not written")
        call.model_span.end(end_time=call.end_ns)
        self._outbox.add(self._admitted(writer.spans, fullness))

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
        """Posts `spans` as one request (on an export thread; never raises)."""
        body = encode_request(self._resource, SCOPE, spans)
        try:
            self._exporter.export_encoded(body, len(spans))
        except Exception:
            log.exception("mlscope: layer/library spans not exported")
            self.loss.add(request_levels(body, len(spans)))
