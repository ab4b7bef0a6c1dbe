"""Cost of the hardware sampler and of ONNX Runtime capture (about 1.5 minutes).

    .venv/bin/python bench/hardware_onnx_overhead.py [--rounds 15]

1. Sampler: CPU time of the sampler thread per second of wall time at its default 100 ms
   interval (the process is otherwise idle), and the cost of one span-boundary sample.
2. ORT: ResNet-18 (built in code, exported in memory) on the CPU provider at batch 1 and 8,
   plain session against mlscope at model level and at library level (ORT's profiler on, node
   and kernel spans written at the end), interleaved rounds in shuffled order, medians.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
import warnings

import onnxruntime
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from mlscope.agents import Agent
from mlscope.agents.hardware import HardwareSampler
from mlscope.agents.resnet import resnet18


class Drop(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sampler_cost() -> None:
    sampler = HardwareSampler()
    start = time.perf_counter()
    for _ in range(200):
        sampler.sample_now(io=True)
    full_us = (time.perf_counter() - start) / 200 * 1e6
    start = time.perf_counter()
    for _ in range(200):
        sampler.sample_now()
    boundary_us = (time.perf_counter() - start) / 200 * 1e6
    sampler = HardwareSampler()
    before = time.process_time()
    sampler.start()
    time.sleep(10)
    sampler.stop()
    share = (time.process_time() - before) / 10
    print(f"sampler: full sample {full_us:.0f} µs, span-boundary sample {boundary_us:.0f} µs, "
          f"thread at 100 ms: {share * 100:.2f}% of one core")


def onnx_cost(rounds: int) -> None:
    torch.set_num_threads(2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet18().eval(), torch.zeros(1, 3, 224, 224), buffer, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    model = buffer.getvalue()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    providers = ["CPUExecutionProvider"]

    def agent(level: str) -> Agent:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        return Agent(provider, level)

    sessions = {
        "plain": onnxruntime.InferenceSession(model, options, providers=providers),
        "model": agent("model").onnx_session(model, providers, options=_options()),
        "library": agent("library").onnx_session(model, providers, options=_options()),
    }
    sessions["library"]._capture._profile_runs = 10**9  # read the profile once, after timing
    for batch, calls in ((1, 4), (8, 1)):
        feed = {"x": torch.randn(batch, 3, 224, 224).numpy()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for session in sessions.values():
            session.run(None, feed)
        for _ in range(rounds):
            for name in random.sample(list(sessions), len(sessions)):
                start = time.perf_counter()
                for _ in range(calls):
                    sessions[name].run(None, feed)
                times[name].append((time.perf_counter() - start) / calls * 1e3)
        plain = statistics.median(times["plain"])
        row = ", ".join(f"{name} {100 * (statistics.median(t) / plain - 1):+.1f}%" for name, t in times.items()
                        if name != "plain")
        print(f"onnxruntime batch {batch}: plain {plain:.1f} ms; {row}")
    start = time.perf_counter()
    sessions["library"].end_profiling()
    print(f"onnxruntime: reading the profile and writing its spans took {time.perf_counter() - start:.2f} s")


def _options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return options


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    sampler_cost()
    onnx_cost(args.rounds)


if __name__ == "__main__":
    main()
