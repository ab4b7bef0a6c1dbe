"""An ordinary OpenTelemetry SDK program, nothing mlscope in it: a 3-level trace and two metrics,
exported over OTLP. Usage: python sdk_program.py http|grpc ENDPOINT; prints the trace id."""

from __future__ import annotations

import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporters(protocol: str, endpoint: str):
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", compression=Compression.Gzip),
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
        )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, insecure=True), OTLPMetricExporter(endpoint=endpoint, insecure=True)


def main(protocol: str, endpoint: str) -> None:
    span_exporter, metric_exporter = exporters(protocol, endpoint)
    resource = Resource.create({"service.name": f"sdk-program-{protocol}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)])
    tracer = tracer_provider.get_tracer("sdk-program")
    meter = meter_provider.get_meter("sdk-program")
    batches = meter.create_counter("batches")
    latency = meter.create_histogram("latency", unit="s")

    with tracer.start_as_current_span("pipeline") as root:
        with tracer.start_as_current_span("model"):
            for index in range(3):
                with tracer.start_as_current_span(f"layer-{index}", attributes={"index": index}):
                    batches.add(1, {"device": "cpu"})
                    latency.record(0.5 * (index + 1))
    print(format(root.get_span_context().trace_id, "032x"), flush=True)
    tracer_provider.shutdown()
    meter_provider.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
