"""What an agent did not deliver, counted per level: spans dropped while its memory budget was
full (agents/deferred.py for the deep levels, `CountingBatchSpanProcessor` for the SDK's spans)
and spans the collector refused or never received (otlp_exporter.DeliveryWatch). The counts go
on the process span (`mlscope.dropped.<level>`, agents/bootstrap.py), into `mlscope run`'s last
line and onto `mlscope evaluate`'s results, so a user summing spans knows what is missing.

The SDK's BatchSpanProcessor drops the oldest queued span without counting it (a deque with a
maximum length); `CountingBatchSpanProcessor` waits briefly for room instead and counts what it
still has to drop. It leans on the processor's `_batch_processor` (`_queue`, `_worker_awaken`)
as of opentelemetry-sdk 1.45; tests/agents/test_span_loss.py exercises them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from mlscope.conventions import DROPPED_ATTRIBUTES, LEVEL, LEVELS, REFUSED

log = logging.getLogger(__name__)


class SpanLoss:
    """Spans not delivered, per level; any thread may add (the model's, the export threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._refusal_logged = False

    def refused(self, body: bytes, spans: int, refused: int, reason: str) -> None:
        """The collector took a request but refused `refused` of its `spans` spans
        (partial_success): counted per level when it refused them all, else as REFUSED (the
        answer does not say which); the first reason is logged once."""
        self.add(request_levels(body, spans) if refused >= spans else {REFUSED: refused})
        with self._lock:
            first, self._refusal_logged = not self._refusal_logged, True
        if first:
            log.warning("mlscope: the collector refused %d of %d spans: %s", refused, spans, reason[:200])

    def add(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            for level, spans in counts.items():
                if spans:
                    self._counts[level] = self._counts.get(level, 0) + spans

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


def dropped_attributes(counts: Mapping[str, int]) -> dict[str, int]:
    """`mlscope.dropped.<level>` for each level with a loss (model, layer, library)."""
    return {DROPPED_ATTRIBUTES[level]: spans for level, spans in counts.items() if spans and level in DROPPED_ATTRIBUTES}


def span_level(span: ReadableSpan) -> str:
    """A span's `mlscope.level` (application when it has none, as the store reads it)."""
    level = (span.attributes or {}).get(LEVEL)
    return level if isinstance(level, str) else LEVELS[0]


def _level_marker(level: str) -> bytes:
    """The bytes of the attribute `mlscope.level` = `level` inside an encoded span (a KeyValue
    message, prefixed with its length: protobuf's encoding and agents/otlp_encoder.py's agree)."""
    message = KeyValue(key=LEVEL, value=AnyValue(string_value=level)).SerializeToString()
    return bytes([len(message)]) + message  # the messages are short: a one-byte length


_MARKERS = {level: _level_marker(level) for level in LEVELS[1:]}


def request_levels(body: bytes, spans: int) -> dict[str, int]:
    """How many of an encoded OTLP request's `spans` spans are of each level: each span carries
    its level once (those without one count as application)."""
    counts = {level: body.count(marker) for level, marker in _MARKERS.items()}
    counts[LEVELS[0]] = spans - sum(counts.values())
    return {level: count for level, count in counts.items() if count}


QUEUE_FULL_WAIT_S = 0.05
"""How long a span ended into a full queue waits for the export thread to make room before it is
dropped (and counted): long enough for one export to finish, short enough not to stall a program."""


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, but a span that finds the queue full waits up to
    QUEUE_FULL_WAIT_S for room and, if there is still none, is dropped and counted in `loss`
    (the SDK would drop the oldest queued span, uncounted). Once a wait has run out, or while
    `failing()` (the collector refuses exports), spans do not wait until the queue has drained
    to half: a program whose collector cannot keep up is slowed once, not at every call."""

    def __init__(self, exporter: SpanExporter, loss: SpanLoss, max_queue_size: int, max_export_batch_size: int,
                 failing: Callable[[], bool] = lambda: False) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, max_export_batch_size=max_export_batch_size)
        self._loss = loss
        self._queue_limit = max_queue_size
        self._failing = failing
        self._waits = True

    def queued(self) -> dict[str, int]:
        """The spans waiting in the queue for export, per level."""
        return dict(Counter(map(span_level, list(self._batch_processor._queue))))

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        batch = self._batch_processor
        queued = len(batch._queue)
        if queued < self._queue_limit:
            self._waits = self._waits or queued <= self._queue_limit // 2
            batch.emit(span)
            return
        batch._worker_awaken.set()
        if self._waits and not self._failing():
            deadline = time.monotonic() + QUEUE_FULL_WAIT_S
            while len(batch._queue) >= self._queue_limit and time.monotonic() < deadline:
                time.sleep(0.001)
        if len(batch._queue) >= self._queue_limit:
            self._waits = False
            self._loss.add({span_level(span): 1})
            return
        batch.emit(span)
