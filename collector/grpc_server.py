"""OTLP/gRPC: TraceService/Export and MetricsService/Export on a grpc.aio server that shares the
event loop, and so the pipeline, with the HTTP side. With a token file (mlscope.auth) a call
needs `authorization: Bearer <token>` metadata with the `ingest` scope, and its `mlscope.evaluation`
spans the `predictor` (or `admin`) scope: others' are refused per span (collector/otlp.py)."""

from __future__ import annotations

import math

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from mlscope.auth import AuthPolicy, Scope, Verdict

from .config import CollectorConfig
from .decoding import Decoder
from .otlp import METRICS, TRACES, Encoding, MalformedRequest, Signal, decode_body
from .pipeline import Batch, IngestPipeline, Overloaded, Refused

# OTLP exporters read the retry delay from this trailer (a serialized google.rpc.RetryInfo).
_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"
_AUTHORIZATION_KEY = "authorization"  # gRPC metadata keys are lower case
_REFUSALS = {
    Verdict.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, "an ingest token is required (authorization: Bearer <token>)"),
    Verdict.FORBIDDEN: (grpc.StatusCode.PERMISSION_DENIED, "this token lacks the ingest scope"),
}


async def _export(pipeline: IngestPipeline, auth: AuthPolicy, decoder: Decoder, signal: Signal, body: bytes,
                  context: grpc.aio.ServicerContext) -> Message:
    metadata = dict(context.invocation_metadata() or ())
    authorization = metadata.get(_AUTHORIZATION_KEY)
    verdict = auth.check(authorization, Scope.INGEST)
    if verdict in _REFUSALS:
        await context.abort(*_REFUSALS[verdict])
    may_write_evaluations = auth.check(authorization, Scope.PREDICTOR) is Verdict.ALLOWED
    try:
        decoded, payload = await decoder.run(len(body), decode_body, signal, body, Encoding.PROTOBUF, may_write_evaluations)
    except MalformedRequest as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    try:
        await pipeline.submit(Batch(signal.name, decoded, payload))
    except Refused as exc:
        code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, Overloaded) else grpc.StatusCode.UNAVAILABLE
        retry_info = RetryInfo(retry_delay=Duration(seconds=math.ceil(exc.retry_after_s)))
        await context.abort(code, str(exc), trailing_metadata=((_RETRY_INFO_KEY, retry_info.SerializeToString()),))
    return signal.response(decoded)


def _serialized(message: Message) -> bytes:
    return message.SerializeToString()


def _service(service: ServiceDescriptor, signal: Signal, pipeline: IngestPipeline, auth: AuthPolicy,
             decoder: Decoder) -> grpc.GenericRpcHandler:
    """`service`'s Export, taking the request's bytes as they arrived (no deserializer): the
    handler parses them, in a decode thread when they are large (collector/decoding.py)."""

    async def export(body: bytes, context: grpc.aio.ServicerContext) -> Message:
        return await _export(pipeline, auth, decoder, signal, body, context)

    method = grpc.unary_unary_rpc_method_handler(export, response_serializer=_serialized)
    return grpc.method_handlers_generic_handler(service.full_name, {"Export": method})


def create_grpc_server(pipeline: IngestPipeline, config: CollectorConfig, auth: AuthPolicy,
                       decoder: Decoder) -> grpc.aio.Server:
    """An unstarted server; the caller adds the port (add_insecure_port returns the bound one).
    Bounded like the HTTP port: message size, connections, streams per connection and calls at
    once, and a connection that has not finished its HTTP/2 handshake within the header timeout
    is closed (a slow client)."""
    options = [
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_allowed_incoming_connections", config.listener.max_connections),
        ("grpc.max_concurrent_streams", config.grpc_max_streams_per_connection),
        ("grpc.server_handshake_timeout_ms", round(config.listener.header_timeout_s * 1000)),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=config.grpc_max_concurrent_rpcs)
    server.add_generic_rpc_handlers((
        _service(trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"], TRACES, pipeline, auth, decoder),
        _service(metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"], METRICS, pipeline, auth, decoder),
    ))
    return server
