"""What tracing costs a PyTorch inference: ResNet-18 (built in code) on CPU, 2 threads.

    .venv/bin/python bench/agent_overhead.py [--rounds 15] [--batch-sizes 1,8]

Variants, run in one process in interleaved rounds (shuffled order each round). "median ms":
median over rounds of the mean call time; "vs plain": median over rounds of each round's mean
call time over the same round's plain one (robust to load that comes and goes on the machine):
  plain            model(x)
  mlscope model    predict span only
  mlscope layer    + a span per module call
  mlscope library  + a span per op (aten::...) that a layer calls, placed under that layer,
                   recorded by mlscope's native recorder (agents/native_module.py)
  mlscope library (kineto ops)  the same ops recorded by a kineto session, torch.profiler's engine
                   (what library level uses with a GPU, or where the recorder cannot be built)
  mlscope library (nested ops)  the same with the ops those ops call, nested under them
  mlscope ... (inline spans)    layer and library with their spans written as ReadableSpans on
                   the model's thread, as an agent with its own span processors does (the
                   others write them on the agent's deferred worker, agents/deferred.py)
  torch.profiler   torch.profiler.profile(CPU) around each call, results not read
  naive OTel hooks an SDK span per module call: start_as_current_span-style in a forward
                   pre-hook (span made current), ended in the post-hook; hooks installed once
  naive OTel hooks (SDK exporter)  the same exported by the OTel SDK's own OTLP/HTTP exporter
                   (its protobuf encoding): the whole naive design, as a tool built on the SDK
                   alone runs it. Ratios are given against both naive rows.

Every tracing variant has its own TracerProvider with a BatchSpanProcessor exporting through
the agents' OTLP exporter, whose HTTP client drops the requests: span creation, queueing and
OTLP encoding (all threads of this process) are measured, the network is not. A round of a
variant is timed up to the end of its spans' export (its deferred worker and batch processor
drained, a thread hand-off or two a round): what its threads do counts toward it, not toward
the variant after it, and a batch processor that would export only every 512 spans pays too.

Then, at batch 1, each variant's latency when calls come with idle time between them (a server
below full load; `--gap-ms`), where the deferred worker's share runs in the gaps: median over
calls of each call's time over the median plain call's.

And where one traced call spends its extra time (medians over calls): capture start
(hooks, profiler), the forward itself (hot path), end (hooks off, profiler stop), then, on the
deferred worker in the agent, the spans (pairing, reading and placing the ops, OTLP encoding),
for each deep level.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Kineto writes two log lines to stderr per profiler start/stop; measured here, only level 6
# silences them. Read once, when torch is imported.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
from opentelemetry import context, trace  # noqa: E402
from opentelemetry.exporter.otlp.common.http import _ExportResult  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult  # noqa: E402
from torch import nn  # noqa: E402

from mlscope.agents import Agent  # noqa: E402
from mlscope.agents.api import choose_writer, deep_span_writer  # noqa: E402
from mlscope.agents.deferred import EncodingSpanWriter  # noqa: E402
from mlscope.agents.spans import SpanWriterKind  # noqa: E402
from mlscope.agents.otlp_exporter import FastOTLPSpanExporter  # noqa: E402
from mlscope.agents.resnet import resnet18  # noqa: E402
from mlscope.agents.torch_capture import CaptureOptions, TorchCapture  # noqa: E402


class DroppingClient:
    """Stands in for the exporter's HTTP client: every request succeeds, none is sent."""

    def export(self, body: bytes) -> _ExportResult:
        return _ExportResult(True, 200, "OK", None)

    def shutdown(self) -> None:
        pass


class DroppingExporter(FastOTLPSpanExporter):
    """The agents' OTLP exporter (encoding for real), counting the spans and dropping the requests."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:9/v1/traces")
        self._client = DroppingClient()
        self.spans = 0

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        self.spans += spans
        return super().export_encoded(body, spans)


class DroppingSdkExporter(OTLPSpanExporter):
    """The OTel SDK's own OTLP/HTTP exporter (its protobuf encoding), counting the spans and
    dropping the requests."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:9/v1/traces")
        self._client = DroppingClient()
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return super().export(spans)


@dataclass(frozen=True)
class Sink:
    provider: TracerProvider
    exporter: DroppingExporter | DroppingSdkExporter

    def spans(self, agent: Agent | None) -> int:
        """Spans exported so far, after handing over everything queued."""
        (agent or self.provider).force_flush()
        return self.exporter.spans


def sink(sdk_exporter: bool = False) -> Sink:
    tracer_provider = TracerProvider()
    exporter = DroppingSdkExporter() if sdk_exporter else DroppingExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    return Sink(tracer_provider, exporter)


@dataclass(frozen=True)
class Variant:
    name: str
    call: Callable[[torch.Tensor], object]
    sink: Sink | None = None
    agent: Agent | None = None

    def spans(self) -> int:
        assert self.sink is not None
        return self.sink.spans(self.agent)


def mlscope_variant(name: str, model: nn.Module, level: str, inline: bool = False, **options: bool) -> Variant:
    spans = sink()
    # The writer start_agent would choose on this machine, unless the inline one is asked for.
    writer = deep_span_writer(level, spans.provider, spans.exporter, SpanWriterKind.INLINE if inline else None)
    agent = Agent(spans.provider, level, deep_spans=writer)
    return Variant(name, agent.trace_model(model, name="resnet18", **options), spans, agent)


def profiler_variant(model: nn.Module) -> Variant:
    def call(images: torch.Tensor) -> object:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            return model(images)

    return Variant("torch.profiler", call)


def naive_variant(model: nn.Module, sdk_exporter: bool = False) -> Variant:
    """The design most tracers use: one live SDK span per module, current while it runs."""
    spans = sink(sdk_exporter)
    tracer = spans.provider.get_tracer("naive")
    open_spans: list[tuple[trace.Span, object]] = []

    def pre(module: nn.Module, args: object, name: str) -> None:
        span = tracer.start_span(name, attributes={"mlscope.level": "layer", "mlscope.layer.path": name})
        open_spans.append((span, context.attach(trace.set_span_in_context(span))))

    def post(module: nn.Module, args: object, output: object) -> None:
        span, token = open_spans.pop()
        context.detach(token)
        span.end()

    naive = resnet18()  # its own copy, so the hooks stay off the model the other variants run
    naive.load_state_dict(model.state_dict())
    for path, module in naive.named_modules():
        module.register_forward_pre_hook(lambda module, args, name=path or "resnet18": pre(module, args, name))
        module.register_forward_hook(post)

    def call(images: torch.Tensor) -> object:
        with tracer.start_as_current_span("predict"):
            return naive(images)

    return Variant("naive OTel hooks (SDK exporter)" if sdk_exporter else "naive OTel hooks", call, spans)


@dataclass(frozen=True)
class Measured:
    """Per variant name, from interleaved rounds."""

    median_s: dict[str, float]
    """Median over rounds of the mean seconds per call."""
    overhead: dict[str, float]
    """Median over rounds of the round's mean call time over the same round's plain one, - 1."""


def measure(variants: list[Variant], images: torch.Tensor, rounds: int, calls: int) -> Measured:
    """Variants interleaved, order shuffled per round. Each round's overhead is taken against
    that round's own plain calls: other load on the machine that comes and goes over seconds then
    shifts a round's variants together instead of whichever rounds it lands in."""
    samples: dict[str, list[float]] = {variant.name: [] for variant in variants}
    rng = random.Random(0)
    for variant in variants:  # warm-up: allocator, oneDNN primitives, kineto's first start
        for _ in range(3):
            variant.call(images)
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            start = time.perf_counter_ns()
            for _ in range(calls):
                variant.call(images)
            if variant.sink is not None:
                variant.spans()  # drains its threads: their work is this variant's
            samples[variant.name].append((time.perf_counter_ns() - start) / calls / 1e9)
    plain = samples["plain"]
    return Measured(
        {name: statistics.median(values) for name, values in samples.items()},
        {
            name: statistics.median(round_s / plain_s - 1 for round_s, plain_s in zip(values, plain))
            for name, values in samples.items()
        },
    )


def latency_with_gaps(variants: list[Variant], images: torch.Tensor, calls: int, gap_s: float) -> None:
    """Median latency of calls made `gap_s` apart, variants shuffled per round."""
    latencies: dict[str, list[int]] = {variant.name: [] for variant in variants}
    rng = random.Random(0)
    for _ in range(calls):
        for variant in rng.sample(variants, len(variants)):
            time.sleep(gap_s)
            start = time.perf_counter_ns()
            variant.call(images)
            latencies[variant.name].append(time.perf_counter_ns() - start)
    plain = statistics.median(latencies["plain"])
    print(f"\nbatch {images.shape[0]}, {gap_s * 1e3:.0f} ms idle before each call (median over {calls} calls):")
    print("| variant | median ms | vs plain |")
    print("|---|---:|---:|")
    for variant in variants:
        median = statistics.median(latencies[variant.name])
        print(f"| {variant.name} | {median / 1e6:.2f} | {median / plain - 1:+.1%} |")


def breakdown(model: nn.Module, images: torch.Tensor, calls: int) -> None:
    """Median µs per phase of one traced call, its forward against the plain forward run just
    before it (so load that comes and goes on the machine shifts both)."""
    spans = sink()
    tracer = spans.provider.get_tracer("breakdown")
    new_span_id = spans.provider.id_generator.generate_span_id
    native = choose_writer("library", spans.provider.id_generator) is SpanWriterKind.NATIVE
    captures = {
        "layer": TorchCapture(model, "resnet18", CaptureOptions()),
        "library": TorchCapture(model, "resnet18", CaptureOptions(ops=True)),
        "library (kineto ops)": TorchCapture(model, "resnet18", CaptureOptions(ops=True, kineto_ops=True)),
        "library (nested ops)": TorchCapture(model, "resnet18", CaptureOptions(ops=True, nested_ops=True)),
    }
    phases: dict[str, dict[str, list[int]]] = {name: {} for name in captures}
    plain_forwards: list[int] = []
    clock = time.perf_counter_ns
    rng = random.Random(0)
    for _ in range(calls):
        start = clock()
        model(images)
        plain = clock() - start
        plain_forwards.append(plain)
        # Shuffled: whatever a call leaves running (kineto's threads) lands on different levels.
        for name, capture in rng.sample(list(captures.items()), len(captures)):
            predict = tracer.start_span("predict")
            t0 = clock()
            recording = capture.start()
            assert recording is not None
            t1 = clock()
            model(images)
            t2 = clock()
            capture.end(recording)
            t3 = clock()
            writer = EncodingSpanWriter(predict.get_span_context(), new_span_id, native)
            capture.write_spans(recording, writer)
            t4 = clock()
            predict.end()
            took = {"start": t1 - t0, "forward": t2 - t1 - plain, "end": t3 - t2}
            took["total"] = sum(took.values())
            took["spans"] = t4 - t3
            for phase, ns in took.items():
                phases[name].setdefault(phase, []).append(ns)
    plain_median = statistics.median(plain_forwards)
    print(f"\nbatch {images.shape[0]}, where the time goes (median µs over {calls} calls; plain forward {plain_median / 1e3:.0f}):")
    print("| level | start | forward - plain | end | caller's extra | vs plain | spans (worker) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in captures:
        median = {phase: statistics.median(values) / 1e3 for phase, values in phases[name].items()}
        print(
            f"| {name} | {median['start']:.0f} | {median['forward']:.0f} | {median['end']:.0f} "
            f"| {median['total']:.0f} | {median['total'] * 1e3 / plain_median:+.1%} | {median['spans']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap-ms", type=float, default=15.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resnet18()
    variants = [
        Variant("plain", model),
        mlscope_variant("mlscope model", model, "model"),
        mlscope_variant("mlscope layer", model, "layer"),
        mlscope_variant("mlscope library", model, "library"),
        mlscope_variant("mlscope library (kineto ops)", model, "library", kineto_ops=True),
        mlscope_variant("mlscope library (nested ops)", model, "library", nested_ops=True),
        mlscope_variant("mlscope layer (inline spans)", model, "layer", inline=True),
        mlscope_variant("mlscope library (inline spans)", model, "library", inline=True),
        profiler_variant(model),
        naive_variant(model),
        naive_variant(model, sdk_exporter=True),
    ]
    writer = choose_writer("library", TracerProvider().id_generator).value
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, rounds {args.rounds}, "
          f"deep-span writer {writer}")
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        images = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        calls = 4 if batch_size == 1 else 1
        exported_before = {variant.name: variant.spans() for variant in variants if variant.sink}
        with torch.inference_mode():
            measured = measure(variants, images, args.rounds, calls)
        medians, overhead = measured.median_s, measured.overhead
        calls_made = args.rounds * calls + 3  # with the warm-up calls
        print(f"\nbatch {batch_size}: {calls} call(s) per round")
        print(
            "| variant | median ms | vs plain | overhead / torch.profiler's | / naive's (SDK exporter) "
            "| / naive's (mlscope encoder) | spans per call |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for variant in variants:
            name = variant.name
            spans = ""
            if variant.sink:
                spans = f"{(variant.spans() - exported_before[name]) / calls_made:.0f}"
            print(
                f"| {name} | {medians[name] * 1e3:.2f} | {overhead[name]:+.1%} "
                f"| {overhead[name] / overhead['torch.profiler']:.2f} "
                f"| {overhead[name] / overhead['naive OTel hooks (SDK exporter)']:.2f} "
                f"| {overhead[name] / overhead['naive OTel hooks']:.2f} "
                f"| {spans} |"
            )
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latency_with_gaps(variants, images, calls=3 * args.rounds, gap_s=args.gap_ms / 1e3)
        breakdown(model, images, calls=80)


if __name__ == "__main__":
    main()
