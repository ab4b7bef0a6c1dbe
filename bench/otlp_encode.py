"""OTLP span encoding: the SDK's encoder against agents/otlp_encoder.py, on an agent's own spans.

    .venv/bin/python bench/otlp_encode.py [--rounds 15] [--calls 4]

Traces `--calls` ResNet-18 calls (batch 1) at library level with shapes into memory: per call 76
layer spans (5 attributes: level, module path and type, input and output shapes), ~69 op spans (1
attribute) and a model span, all with the agent's HW/SW-stack Resource. Then, in one process and
in interleaved rounds (the encoders' order alternating), it encodes three batches with each: the
layer spans, the op spans, and all spans. Prints the medians over the rounds of µs per span and
the SDK/mlscope ratio. The SDK's figure is what its OTLPSpanExporter pays per batch:
`encode_spans(spans).SerializePartialToString()`. Both outputs are checked to parse to the same
message first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlscope.agents import Agent
from mlscope.agents.otlp_encoder import encode_spans
from mlscope.agents.resnet import resnet18
from mlscope.agents.resource import stack_attributes
from mlscope.conventions import LEVEL

Encoder = Callable[[Sequence[ReadableSpan]], bytes]
ENCODERS: dict[str, Encoder] = {
    "SDK": lambda spans: sdk_encode_spans(spans).SerializePartialToString(),
    "mlscope": encode_spans,
}
REPEATS_PER_ROUND = 3


@dataclass(frozen=True)
class Batch:
    name: str
    spans: tuple[ReadableSpan, ...]


def agent_spans(calls: int) -> list[ReadableSpan]:
    """The spans of `calls` traced ResNet-18 calls at library level, as the exporter gets them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({**stack_attributes(), "service.name": "bench-otlp-encode"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    model = Agent(provider, "library").trace_model(resnet18(), name="resnet18", shapes=True)
    torch.set_num_threads(2)
    with torch.inference_mode():
        for _ in range(calls):
            model(torch.randn(1, 3, 224, 224))
    return list(exporter.get_finished_spans())


def batches(spans: list[ReadableSpan]) -> list[Batch]:
    def at(level: str) -> tuple[ReadableSpan, ...]:
        return tuple(span for span in spans if span.attributes.get(LEVEL) == level)

    return [Batch("layer spans", at("layer")), Batch("op spans", at("library")), Batch("all spans", tuple(spans))]


def microseconds_per_span(encode: Encoder, spans: Sequence[ReadableSpan]) -> float:
    started = time.perf_counter()
    for _ in range(REPEATS_PER_ROUND):
        encode(spans)
    return (time.perf_counter() - started) / REPEATS_PER_ROUND / len(spans) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=4, help="ResNet-18 calls whose spans are encoded")
    args = parser.parse_args()

    spans = agent_spans(args.calls)
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)
    timings: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        order = list(ENCODERS) if round_index % 2 == 0 else list(reversed(ENCODERS))
        for batch in batches(spans):
            for name in order:
                timings.setdefault((batch.name, name), []).append(microseconds_per_span(ENCODERS[name], batch.spans))

    print(f"{len(spans)} spans of {args.calls} ResNet-18 calls at library level; medians of {args.rounds} rounds")
    print(f"{'batch':<12} {'spans':>6} {'SDK µs/span':>12} {'mlscope µs/span':>16} {'ratio':>7}")
    for batch in batches(spans):
        sdk, ours = (statistics.median(timings[batch.name, name]) for name in ENCODERS)
        print(f"{batch.name:<12} {len(batch.spans):>6} {sdk:>12.1f} {ours:>16.1f} {sdk / ours:>6.1f}×")


if __name__ == "__main__":
    main()
