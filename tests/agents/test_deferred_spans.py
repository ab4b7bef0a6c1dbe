"""agents/deferred.py: the deep levels' spans written and encoded on the agent's worker thread."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter

import pytest
import torch
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from torch import nn

from mlscope.agents import Agent
from mlscope.agents.deferred import DeferredSpans, EncodingSpanWriter
from mlscope.agents.otlp_encoder import encode_request, encode_spans
from mlscope.agents.otlp_exporter import FastOTLPSpanExporter
from mlscope.agents.resnet import resnet18
from mlscope.agents.spans import SCOPE, SpanWriter, SpanWriterKind
from tests.agents.agent_testing import CapturingClient, agent_at
from mlscope.agents.torch_capture import CaptureOptions, TorchCapture, _ProfilerSession, _read_ops

RESNET18_MODULE_CALLS = len(list(resnet18().named_modules())) + 8  # each BasicBlock's relu runs twice


def deferred_agent(level: str, **options: int) -> tuple[Agent, DeferredSpans, CapturingClient]:
    """An agent exporting through a FastOTLPSpanExporter whose client keeps the requests, with
    its deep spans on a deferred worker, as start_agent builds it."""
    client = CapturingClient()
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    exporter._client = client
    provider = TracerProvider(resource=Resource({"service.name": "deferred-test"}), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    deferred = DeferredSpans(exporter, provider.resource, provider.id_generator.generate_span_id, **options)
    return Agent(provider, level, deep_spans=deferred), deferred, client


def attribute(span: SpanMessage, key: str) -> object:
    for pair in span.attributes:
        if pair.key == key:
            value = pair.value
            return getattr(value, value.WhichOneof("value"))
    raise KeyError(key)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def test_a_library_level_call_exports_the_module_tree_and_its_ops(images: torch.Tensor) -> None:
    agent, deferred, client = deferred_agent("library")
    model = agent.trace_model(resnet18(), name="resnet18")
    with torch.inference_mode():
        model(images)
    agent.force_flush()
    spans = client.spans()
    (predict,) = [span for span in spans if span.name == "predict"]
    by_id = {span.span_id: span for span in spans}
    levels = [attribute(span, "mlscope.level") for span in spans]
    assert levels.count("layer") == RESNET18_MODULE_CALLS and levels.count("library") > 50
    assert {span.trace_id for span in spans} == {predict.trace_id}
    # Every deep span descends from the model span, inside its interval.
    for span in spans:
        if span is predict:
            continue
        ancestor = by_id[span.parent_span_id]
        while ancestor is not predict:
            ancestor = by_id[ancestor.parent_span_id]
        assert predict.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
    (root,) = [span for span in spans if span.parent_span_id == predict.span_id and attribute(span, "mlscope.level") == "layer"]
    assert root.name == "resnet18" and attribute(root, "mlscope.layer.type") == "ResNet18"
    conv1 = next(span for span in spans if span.name == "conv1")
    assert by_id[conv1.parent_span_id] is root
    assert any(by_id[span.parent_span_id] is conv1 and span.name == "aten::conv2d" for span in spans)
    assert attribute(predict, "mlscope.library.ops_inside_layers") >= 0.99
    agent.shutdown()


class Guarded(nn.Module):
    """Calls a module that raises, and recovers."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = nn.Linear(2, 2)  # the images' last dimension is 224: it raises

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.failing(x)
        except RuntimeError:
            return x


def test_the_encoded_spans_are_those_the_span_writer_writes(images: torch.Tensor) -> None:
    """One recording written by both writers, with the same span ids: the same Span messages
    (layers with shapes, ops and nested ops, a failed layer's error status)."""

    class CountingIds(IdGenerator):
        def __init__(self) -> None:
            self._next = itertools.count(1)

        def generate_span_id(self) -> int:
            return next(self._next)

        def generate_trace_id(self) -> int:
            return 0x5B8EFFF798038103D269B633813FC60C

    provider = TracerProvider(id_generator=CountingIds(), shutdown_on_exit=False)
    written = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(written))
    tracer = provider.get_tracer("test")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Guarded())
    capture = TorchCapture(model, "tiny", CaptureOptions(ops=True, nested_ops=True, shapes=True))
    recording = capture.start()
    assert recording is not None
    with torch.inference_mode():
        model(images)
    capture.end(recording)
    parent = tracer.start_span("predict").get_span_context()  # span id 1

    attributes = capture.write_spans(recording, SpanWriter(tracer, parent))  # span ids from 2
    same_ids = itertools.count(2)
    encoder = EncodingSpanWriter(parent, lambda: next(same_ids))
    assert capture.write_spans(recording, encoder) == attributes

    def spans(body: bytes) -> list[SpanMessage]:
        return list(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)

    expected = spans(encode_spans(written.get_finished_spans()))
    assert spans(encode_request(provider.resource, SCOPE, encoder.spans)) == expected
    assert len(expected) > 10 and any(span.status.message == "forward raised" for span in expected)


def test_shutdown_exports_every_queued_call_and_ends_its_model_span() -> None:
    agent, _, client = deferred_agent("layer")
    model = agent.trace_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), name="tiny")
    client.gate.clear()  # the worker's first export blocks: calls queue up behind it
    for _ in range(5):
        model(torch.ones(1, 4))
    client.gate.set()
    agent.shutdown()
    names = [span.name for span in client.spans()]
    assert names.count("predict") == 5 and names.count("0") == names.count("1") == names.count("tiny") == 5


def block_writer(deferred: DeferredSpans) -> threading.Event:
    """Holds the deferred writer (behind what is queued) until the returned event is set."""
    release = threading.Event()
    deferred.write(lambda writer_for: release.wait())
    return release


def wait_for_writer(deferred: DeferredSpans) -> None:
    """Returns once the writer has handled everything queued before this call."""
    reached = threading.Event()
    deferred.write(lambda writer_for: reached.set())
    assert reached.wait(30)


def count_exports(client: CapturingClient) -> threading.Semaphore:
    """Released each time `client` starts an export (before its gate)."""
    entered = threading.Semaphore(0)
    export = client.export

    def counted(body: bytes) -> object:
        entered.release()
        return export(body)

    client.export = counted  # type: ignore[method-assign]
    return entered


def level_counts(spans: list[SpanMessage]) -> Counter[str]:
    return Counter(str(attribute(span, "mlscope.level")) for span in spans)


def test_a_full_queue_drops_the_deep_spans_and_keeps_the_model_spans(caplog: pytest.LogCaptureFixture) -> None:
    agent, deferred, client = deferred_agent("layer", max_queue_size=2)
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")
    release = block_writer(deferred)  # the model's thread outruns the writer: two calls queue up
    for _ in range(8):
        model(torch.ones(1))
    release.set()
    agent.shutdown()
    names = [span.name for span in client.spans()]
    assert 6 <= deferred.dropped_calls <= 7 and names.count("predict") == 8
    assert names.count("tiny") == 8 - deferred.dropped_calls
    assert deferred.loss.counts() == {"layer": 2 * deferred.dropped_calls}  # the Sequential and its ReLU, per call
    assert [record.message for record in caplog.records].count(
        "mlscope: layer/library spans dropped: the exporter is not keeping up"
    ) == 1


CALL_LAYERS, CALL_OPS = 4, 3  # the Sequential and its three modules; two linear ops and a relu


def tiny_model(agent: Agent) -> nn.Module:
    return agent.trace_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), name="tiny")


def call_bytes() -> int:
    """The encoded size of one call's deep spans at library level."""
    agent, deferred, client = deferred_agent("library")
    with torch.inference_mode():
        tiny_model(agent)(torch.ones(1, 8))
    agent.shutdown()
    return sum(span.ByteSize() + 3 for span in client.spans() if span.name != "predict")


def test_writing_goes_on_while_exports_hang_and_a_full_budget_drops_library_spans_before_layer_spans() -> None:
    budget = 8 * call_bytes()
    agent, deferred, client = deferred_agent("library", budget_bytes=budget, max_export_spans=1, exporters=2)
    model = tiny_model(agent)
    client.gate.clear()  # every export hangs: the budget fills with spans in flight and pending
    calls = 30
    with torch.inference_mode():
        for _ in range(calls):
            model(torch.ones(1, 8))
    wait_for_writer(deferred)  # every call written while no export has returned
    lost = deferred.loss.counts()
    client.gate.set()
    agent.shutdown()
    delivered = level_counts(client.spans())
    assert delivered["model"] == calls and "model" not in lost
    assert delivered["layer"] + lost["layer"] == calls * CALL_LAYERS
    assert delivered["library"] + lost["library"] == calls * CALL_OPS
    calls_with_layers, calls_with_ops = delivered["layer"] // CALL_LAYERS, delivered["library"] // CALL_OPS
    # Some calls kept all, some their layer spans only, the rest none: whole calls every time.
    assert delivered["layer"] % CALL_LAYERS == 0 and delivered["library"] % CALL_OPS == 0
    assert 0 < calls_with_ops < calls_with_layers < calls
    assert deferred.dropped_calls == calls - calls_with_ops
    assert deferred.loss.counts() == lost  # nothing more lost once the exports went through


def test_exports_run_concurrently_and_batch_what_came_while_they_were_in_flight() -> None:
    agent, deferred, client = deferred_agent("layer", max_export_spans=2, exporters=2)
    entered = count_exports(client)
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")  # two layer spans a call
    client.gate.clear()
    for _ in range(2):  # each call's spans in an export of their own, both hanging
        model(torch.ones(1))
        assert entered.acquire(timeout=30)
    for _ in range(8):
        model(torch.ones(1))
    wait_for_writer(deferred)
    client.gate.set()
    agent.shutdown()
    deep_requests = [body for body in client.bodies if b"predict" not in body]
    sizes = sorted(len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
                   for body in deep_requests)
    # The eight calls' spans that came while both exports hung left in one request.
    assert sizes == [2, 2, 16]


def test_a_shutdown_that_runs_out_of_time_counts_what_it_could_not_send() -> None:
    agent, deferred, client = deferred_agent("layer", max_export_spans=1, exporters=1)
    entered = count_exports(client)
    model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")  # two layer spans a call
    client.gate.clear()
    model(torch.ones(1))
    assert entered.acquire(timeout=30)  # its spans in flight, hanging
    for _ in range(4):
        model(torch.ones(1))
    wait_for_writer(deferred)
    deferred.shutdown(timeout_s=0.2)
    assert deferred.loss.counts() == {"layer": 8}  # pending: never sent
    client.gate.set()  # the export in flight goes through after all, on its own thread
    agent.shutdown()
    deadline = time.monotonic() + 30
    while level_counts(client.spans())["layer"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    delivered = level_counts(client.spans())
    assert delivered["layer"] == 2 and delivered["model"] == 5


def test_an_added_span_processor_leaves_the_writer_as_it_is() -> None:
    """Adding a processor used to switch the worker off; the writer is now the agent's for life:
    the processor sees the SDK's spans, the exporter every span, deep ones from the worker."""
    agent, deferred, client = deferred_agent("layer")
    seen = InMemorySpanExporter()
    agent.add_span_processor(SimpleSpanProcessor(seen))
    agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")(torch.ones(1))
    agent.shutdown()
    assert agent.writer is deferred.kind and deferred.kind is not SpanWriterKind.INLINE
    assert [span.name for span in seen.get_finished_spans()] == ["predict"]
    assert sorted(span.name for span in client.spans()) == ["0", "predict", "tiny"]


def test_with_the_inline_writer_an_added_span_processor_sees_the_deep_spans() -> None:
    agent, _ = agent_at("layer", writer=SpanWriterKind.INLINE)
    seen = InMemorySpanExporter()
    agent.add_span_processor(SimpleSpanProcessor(seen))
    agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")(torch.ones(1))
    agent.shutdown()
    assert sorted(span.name for span in seen.get_finished_spans()) == ["0", "predict", "tiny"]


def test_profiler_results_read_on_another_thread_while_the_next_session_runs() -> None:
    """The worker reads a call's profiler result while the model thread profiles the next call."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    x = torch.ones(1, 3, 32, 32)

    def profiled() -> object:
        session = _ProfilerSession.start()
        with torch.inference_mode():
            model(x)
        return session.stop()

    expected = {nested: len(_read_ops(profiled(), False, nested).names) for nested in (False, True)}
    results: queue.Queue[tuple[object, bool] | None] = queue.Queue()
    read: list[tuple[bool, int]] = []

    def reader() -> None:
        while (item := results.get()) is not None:
            result, nested = item
            read.append((nested, len(_read_ops(result, False, nested).names)))

    thread = threading.Thread(target=reader)
    thread.start()
    for call in range(20):
        results.put((profiled(), call % 2 == 1))
    results.put(None)
    thread.join()
    assert len(read) == 20 and set(read) == set(expected.items())
