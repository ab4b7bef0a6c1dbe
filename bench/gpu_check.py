"""GPU check: run on a machine with an NVIDIA GPU and a CUDA build of torch (about 10 s, and
about 30 s more the first time, building the native op recorder).

    .venv/bin/python bench/gpu_check.py

Checks, printing one PASS/FAIL line each and exiting 1 if any fails:
1. NVML: the hardware sampler sees the GPU(s) and exports hw.gpu.* samples with their own times;
   a predict span at hardware level carries mlscope.hw.gpu.utilization.
2. CUDA kernels: at library level, ResNet-18 on the GPU gives device-kernel spans, each under
   the op that launched it, and (nearly) all of them have a layer span among their ancestors.
Nothing is sent over the network: spans and metrics stay in memory.
"""

from __future__ import annotations

import sys
import time

import torch
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlscope.agents import Agent
from mlscope.agents.hardware import HardwareSampler
from mlscope.agents.resnet import resnet18

failures = 0


def check(name: str, ok: bool, detail: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


class KeepMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[tuple[int, float]]] = {}

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.points.setdefault(metric.name, []).extend(
                        (p.time_unix_nano, p.value) for p in metric.data.data_points)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None: ...


def agent_at(level: str, sampler: HardwareSampler | None = None) -> tuple[Agent, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return Agent(provider, level, sampler), spans


def has_layer_ancestor(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> bool:
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        ancestor = by_id[parent.span_id]
        if ancestor.attributes.get("mlscope.level") == "layer":
            return True
        parent = ancestor.parent
    return False


def main() -> int:
    if not torch.cuda.is_available():
        check("cuda", False, "torch.cuda.is_available() is False (a CPU build of torch, or no GPU)")
        return 1
    device = torch.device("cuda")
    model = resnet18().eval().to(device)
    images = torch.randn(8, 3, 224, 224, device=device)

    # 1. NVML samples and span aggregates.
    metrics = KeepMetrics()
    sampler = HardwareSampler(metrics, interval_s=0.05, export_interval_s=0.5)
    check("nvml devices", sampler.gpu_count > 0, f"{sampler.gpu_count} GPU(s) seen by NVML")
    sampler.start()
    agent, spans = agent_at("hardware", sampler)
    traced = agent.trace_model(model, name="resnet18")
    started = time.monotonic()
    with torch.inference_mode():
        while time.monotonic() - started < 3:
            traced(images)
            torch.cuda.synchronize()
    sampler.stop()
    utilization = metrics.points.get("hw.gpu.utilization", [])
    check("nvml samples exported", len(utilization) >= 20 and max(v for _, v in utilization) > 0,
          f"{len(utilization)} hw.gpu.utilization points, max {max((v for _, v in utilization), default=0):.2f}")
    times = [t for t, _ in utilization]
    check("samples carry their own times", len(set(times)) == len(times), f"{len(set(times))} distinct times")
    for name in ("hw.gpu.memory.usage", "hw.power", "hw.temperature", "mlscope.gpu.clock.sm"):
        check(f"metric {name}", bool(metrics.points.get(name)), f"{len(metrics.points.get(name, []))} points")
    predicts = [s for s in spans.get_finished_spans() if s.name == "predict"]
    with_gpu = [s for s in predicts if "mlscope.hw.gpu.utilization" in s.attributes]
    check("predict spans carry GPU utilization", bool(predicts) and len(with_gpu) == len(predicts),
          f"{len(with_gpu)} of {len(predicts)}")

    # 2. CUDA kernel spans under their layers.
    agent, spans = agent_at("library")
    traced = agent.trace_model(model, name="resnet18")
    with torch.inference_mode():
        for _ in range(3):
            traced(images)
            torch.cuda.synchronize()
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    kernels = [s for s in finished if s.attributes.get("mlscope.library.device") == "cuda"]
    under_op = [k for k in kernels if k.parent is not None and k.parent.span_id in by_id
                and by_id[k.parent.span_id].attributes.get("mlscope.level") == "library"]
    under_layer = [k for k in kernels if has_layer_ancestor(k, by_id)]
    check("cuda kernel spans", len(kernels) >= 3 * 20, f"{len(kernels)} device spans in 3 calls")
    check("kernels under their launching op", len(under_op) >= 0.99 * len(kernels) > 0,
          f"{len(under_op)} of {len(kernels)}")
    check("kernels under a layer", len(under_layer) >= 0.99 * len(kernels) > 0,
          f"{len(under_layer)} of {len(kernels)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
