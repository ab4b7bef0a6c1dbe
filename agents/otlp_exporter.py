"""The SDK's OTLP/HTTP span exporter with agents/otlp_encoder.py doing the encoding.

Everything but the encoding is the SDK's: endpoint and environment variables, headers, TLS,
compression, the HTTP client's retries with backoff on 429/502/503/504 and connection errors
(honouring Retry-After) within the timeout, except a refused connection (nothing listens: the
collector is gone, and waiting for it would only delay the program's exit), the request size limit, the exporter's own metrics
and shutdown. Its `export` encodes inline, so this overrides `export` with the same steps around
a different encoder. It leans on the SDK exporter's attributes as of
opentelemetry-exporter-otlp-proto-http 1.45 (`_client`, `_metrics`, `_max_request_size`,
`_shutdown`); tests/agents/test_otlp_encoder.py exercises them against a real collector.

An agent's spans leave by two doors of its one exporter: `export` (ReadableSpans from the SDK's
batch processor) and `export_encoded` (requests the deferred worker encoded, agents/deferred.py).
`ExporterDecorator` is how to see both, e.g. to count spans (`mlscope run --leveled`,
`mlscope evaluate`): `start_agent(wrap_exporter=...)` puts one around the agent's exporter.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from .otlp_encoder import encode_spans
from .span_loss import SpanLoss, request_levels, span_level

log = logging.getLogger(__name__)


Rejected = Callable[[bytes, int, int, str], None]
"""Called with a request's body, its span count, how many of its spans the collector refused
(partial_success) and the collector's reason."""


class FastOTLPSpanExporter(OTLPSpanExporter):
    """OTLPSpanExporter (same constructor, plus `on_rejected`) whose requests are encoded by
    `encode_spans`. A 200 may still refuse some spans (partial_success: a bad id, a start time
    outside the collector's window); the SDK's client does not read the answer, so this keeps
    each export thread's last HTTP result and hands what was refused to `on_rejected`."""

    def __init__(self, *args: Any, on_rejected: Rejected | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_rejected = on_rejected
        self._last_result = threading.local()  # several export threads share this exporter
        submit = self._client._submit

        def submit_keeping_the_answer(data: bytes, timeout: float) -> Any:
            self._last_result.value = result = submit(data, timeout)
            return result

        self._client._submit = submit_keeping_the_answer
        # A refused connection is not retried: nothing listens there (the collector is gone), and
        # the SDK's backoff would keep every export, and the program's exit, waiting for seconds.
        transport = self._client._transport
        is_connection_error = transport.is_connection_error
        transport.is_connection_error = lambda error: is_connection_error(error) and not connection_refused(error)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            body = encode_spans(spans)
        except Exception as error:  # a batch that cannot be encoded is dropped, not raised
            log.exception("mlscope: failed to encode a span batch")
            with self._metrics.export_operation(len(spans)) as result:
                result.error = error
            return SpanExportResult.FAILURE
        return self.export_encoded(body, len(spans))

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        """Sends a request already encoded (`body`, holding `spans` spans) as `export` would:
        the deep levels' spans come encoded from agents/deferred.py, without ReadableSpans."""
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(spans) as result:
            if _is_request_too_large(body, self._max_request_size):
                log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(body),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(body)} bytes exceeds max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            self._last_result.value = None
            sent = self._client.export(body)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code} if sent.status_code is not None else None
                return SpanExportResult.FAILURE
        refused, reason = partial_success(self._last_result.value)
        if refused and self._on_rejected is not None:
            self._on_rejected(body, spans, refused, reason)
        return SpanExportResult.SUCCESS


def connection_refused(error: BaseException | None) -> bool:
    """Whether `error` (the HTTP client's: requests' ConnectionError around urllib3's errors)
    comes of a refused connection, somewhere in its chain of causes and arguments."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return False


def partial_success(answer: Any) -> tuple[int, str]:
    """(spans refused, the collector's reason) from an OTLP/HTTP answer; (0, "") for none or an
    answer that is not an ExportTraceServiceResponse."""
    try:
        content = answer.content() if answer is not None else b""
        response = ExportTraceServiceResponse.FromString(content) if content else None
    except Exception:  # an answer we cannot read refuses nothing we can count
        return 0, ""
    if response is None or not response.HasField("partial_success"):
        return 0, ""
    return response.partial_success.rejected_spans, response.partial_success.error_message


class EncodedSpanExporter(Protocol):
    """A span exporter that also takes requests already encoded: FastOTLPSpanExporter, and the
    decorators around it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult: ...

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult: ...

    def shutdown(self) -> None: ...

    def force_flush(self, timeout_millis: int = 30_000) -> bool: ...


class ExporterDecorator(SpanExporter, EncodedSpanExporter):
    """Passes every export on to `exporter` and shows it, with its result, to `exported` or
    `exported_encoded` (which do nothing here: subclasses say what to do with them)."""

    def __init__(self, exporter: EncodedSpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._exporter.export(spans)
        self.exported(spans, result)
        return result

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        result = self._exporter.export_encoded(body, spans)
        self.exported_encoded(body, spans, result)
        return result

    def exported(self, spans: Sequence[ReadableSpan], result: SpanExportResult) -> None:
        """Called after each `export` with its spans and result."""

    def exported_encoded(self, body: bytes, spans: int, result: SpanExportResult) -> None:
        """Called after each `export_encoded` with its request (`spans` spans) and result."""

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class DeliveryWatch(ExporterDecorator):
    """Counts the spans the collector did not take, per level, into `loss`, and whether the last
    export failed (`failing`): an agent whose collector is gone does not wait for it at exit, and
    `mlscope run` does not call a trace stored when some of it was not delivered."""

    def __init__(self, exporter: EncodedSpanExporter, loss: SpanLoss) -> None:
        super().__init__(exporter)
        self.loss = loss
        self.failing = False
        self._in_flight: dict[int, Callable[[], Mapping[str, int]]] = {}
        """Exports not answered yet, by id: their spans per level, counted only when asked."""
        self._keys = itertools.count()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._while_in_flight(lambda: Counter(map(span_level, spans))):
            return super().export(spans)

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        with self._while_in_flight(lambda: request_levels(body, spans)):
            return super().export_encoded(body, spans)

    @contextlib.contextmanager
    def _while_in_flight(self, levels: Callable[[], Mapping[str, int]]) -> Iterator[None]:
        key = next(self._keys)
        self._in_flight[key] = levels
        try:
            yield
        finally:
            del self._in_flight[key]

    def in_flight(self) -> dict[str, int]:
        """The spans of the exports still waiting for the collector's answer, per level."""
        counts: Counter[str] = Counter()
        for levels in list(self._in_flight.values()):
            counts.update(levels())
        return dict(counts)

    def exported(self, spans: Sequence[ReadableSpan], result: SpanExportResult) -> None:
        self.failing = result is not SpanExportResult.SUCCESS
        if self.failing:
            self.loss.add(Counter(map(span_level, spans)))

    def exported_encoded(self, body: bytes, spans: int, result: SpanExportResult) -> None:
        self.failing = result is not SpanExportResult.SUCCESS
        if self.failing:
            self.loss.add(request_levels(body, spans))
