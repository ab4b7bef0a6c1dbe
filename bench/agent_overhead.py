"""What tracing costs a PyTorch inference: ResNet-18 (built in code) on CPU, 2 threads.

    .venv/bin/python bench/agent_overhead.py [--rounds 15] [--batch-sizes 1,8]

Variants, run in one process in interleaved rounds (shuffled order each round). "median ms":
median over rounds of the mean call time; "vs plain": median over rounds of each round's mean
call time over the same round's plain one (robust to load that comes and goes on the machine):
  plain            model(x)
  mlscope model    predict span only
  mlscope layer    + a span per module call
  mlscope library  + a span per torch.profiler op that a layer calls, placed under that layer
  mlscope library (nested ops)  the same with the ops those ops call, nested under them
  torch.profiler   torch.profiler.profile(CPU) around each call, results not read
  naive OTel hooks an SDK span per module call: start_as_current_span-style in a forward
                   pre-hook (span made current), ended in the post-hook; hooks installed once

Every tracing variant has its own TracerProvider with a BatchSpanProcessor whose exporter drops
the spans: span creation and queueing are measured, OTLP encoding and the network are not.

Then, at batch 1, where one traced call spends its extra time (medians over calls): capture start
(hooks, profiler), the forward itself (hot path), stop (hooks off, profiler stop) and finish
(pairing, op placement, span writing), for each deep level.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# Kineto writes two log lines to stderr per profiler start/stop; measured here, only level 6
# silences them. Read once, when torch is imported.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
from opentelemetry import context, trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from torch import nn  # noqa: E402

from mlscope.agents import Agent  # noqa: E402
from mlscope.agents.resnet import resnet18  # noqa: E402
from mlscope.agents.spans import SpanWriter  # noqa: E402
from mlscope.agents.torch_capture import CaptureOptions, TorchCapture  # noqa: E402


class DroppingExporter(SpanExporter):
    """Counts the spans it is handed and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans) -> SpanExportResult:  # type: ignore[no-untyped-def]
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


@dataclass(frozen=True)
class Sink:
    provider: TracerProvider
    exporter: DroppingExporter

    def spans(self) -> int:
        """Spans exported so far, after handing over everything queued."""
        self.provider.force_flush()
        return self.exporter.spans


def sink() -> Sink:
    tracer_provider = TracerProvider()
    exporter = DroppingExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    return Sink(tracer_provider, exporter)


@dataclass(frozen=True)
class Variant:
    name: str
    call: Callable[[torch.Tensor], object]
    sink: Sink | None = None


def mlscope_variant(name: str, model: nn.Module, level: str, **options: bool) -> Variant:
    spans = sink()
    traced = Agent(spans.provider, level).trace_model(model, name="resnet18", **options)
    return Variant(name, traced, spans)


def profiler_variant(model: nn.Module) -> Variant:
    def call(images: torch.Tensor) -> object:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            return model(images)

    return Variant("torch.profiler", call)


def naive_variant(model: nn.Module) -> Variant:
    """The design most tracers use: one live SDK span per module, current while it runs."""
    spans = sink()
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

    return Variant("naive OTel hooks", call, spans)


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
            samples[variant.name].append((time.perf_counter_ns() - start) / calls / 1e9)
    plain = samples["plain"]
    return Measured(
        {name: statistics.median(values) for name, values in samples.items()},
        {
            name: statistics.median(round_s / plain_s - 1 for round_s, plain_s in zip(values, plain))
            for name, values in samples.items()
        },
    )


def breakdown(model: nn.Module, images: torch.Tensor, calls: int) -> None:
    """Median µs per phase of one traced call, its forward against the plain forward run just
    before it (so load that comes and goes on the machine shifts both)."""
    spans = sink()
    tracer = spans.provider.get_tracer("breakdown")
    captures = {
        "layer": TorchCapture(model, "resnet18", CaptureOptions()),
        "library": TorchCapture(model, "resnet18", CaptureOptions(ops=True)),
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
            recording.stop()
            t3 = clock()
            capture.finish(recording, SpanWriter(tracer, predict.get_span_context()))
            t4 = clock()
            predict.end()
            took = {"start": t1 - t0, "forward": t2 - t1 - plain, "stop": t3 - t2, "finish": t4 - t3}
            took["total"] = sum(took.values())
            for phase, ns in took.items():
                phases[name].setdefault(phase, []).append(ns)
    plain_median = statistics.median(plain_forwards)
    print(f"\nbatch {images.shape[0]}, where the time goes (median µs over {calls} calls; plain forward {plain_median / 1e3:.0f}):")
    print("| level | start | forward - plain | stop | finish | total extra | vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in captures:
        median = {phase: statistics.median(values) / 1e3 for phase, values in phases[name].items()}
        print(
            f"| {name} | {median['start']:.0f} | {median['forward']:.0f} | {median['stop']:.0f} "
            f"| {median['finish']:.0f} | {median['total']:.0f} | {median['total'] * 1e3 / plain_median:+.1%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resnet18()
    variants = [
        Variant("plain", model),
        mlscope_variant("mlscope model", model, "model"),
        mlscope_variant("mlscope layer", model, "layer"),
        mlscope_variant("mlscope library", model, "library"),
        mlscope_variant("mlscope library (nested ops)", model, "library", nested_ops=True),
        profiler_variant(model),
        naive_variant(model),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, rounds {args.rounds}")
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        images = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        calls = 4 if batch_size == 1 else 1
        exported_before = {variant.name: variant.sink.spans() for variant in variants if variant.sink}
        with torch.inference_mode():
            measured = measure(variants, images, args.rounds, calls)
        medians, overhead = measured.median_s, measured.overhead
        calls_made = args.rounds * calls + 3  # with the warm-up calls
        print(f"\nbatch {batch_size}: {calls} call(s) per round")
        print("| variant | median ms | vs plain | overhead / torch.profiler's | overhead / naive's | spans per call |")
        print("|---|---:|---:|---:|---:|---:|")
        for variant in variants:
            name = variant.name
            spans = ""
            if variant.sink:
                spans = f"{(variant.sink.spans() - exported_before[name]) / calls_made:.0f}"
            print(
                f"| {name} | {medians[name] * 1e3:.2f} | {overhead[name]:+.1%} "
                f"| {overhead[name] / overhead['torch.profiler']:.2f} | {overhead[name] / overhead['naive OTel hooks']:.2f} "
                f"| {spans} |"
            )
    with torch.inference_mode():
        breakdown(model, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)), calls=80)


if __name__ == "__main__":
    main()
