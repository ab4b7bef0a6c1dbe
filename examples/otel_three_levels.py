"""A plain OpenTelemetry program with no mlscope import: a 3-level trace sent over OTLP.

    python examples/otel_three_levels.py http|grpc ENDPOINT   -> prints the trace id
"""

import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

protocol, endpoint = sys.argv[1], sys.argv[2]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")

provider = TracerProvider(resource=Resource.create({"service.name": f"plain-otel-{protocol}"}))
provider.add_span_processor(BatchSpanProcessor(exporter))
tracer = provider.get_tracer("example")

with tracer.start_as_current_span("request") as root:
    with tracer.start_as_current_span("model", attributes={"mlscope.level": "model"}):
        with tracer.start_as_current_span("layer-a", attributes={"mlscope.level": "layer"}):
            pass
        with tracer.start_as_current_span("layer-b", attributes={"mlscope.level": "layer"}):
            pass
    trace_id = format(root.get_span_context().trace_id, "032x")

provider.shutdown()
print(trace_id)
