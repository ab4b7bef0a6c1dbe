"""OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` as the OTLP specification answers them.

Errors carry a google.rpc.Status in the request's encoding (JSON when the content type itself was
refused). Bodies are decompressed here, not by aiohttp, so that the decompressed size is bounded
while inflating: run the app with `auto_decompress=False` (the Collector's runner does).
With a token file (mlscope.auth), both paths need an `ingest` token, checked before the body is read,
and `mlscope.evaluation` spans a `predictor` (or `admin`) one: others' are refused per span.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from mlscope.auth import NO_AUTH, AuthPolicy, Scope, Verdict
from mlscope.listener import PROTOCOL_ERROR_BODY, ListenerLimits, add_body_deadline

from .decoding import Decoder
from .otlp import METRICS, TRACES, Encoding, MalformedRequest, Signal, decode_body
from .pipeline import Batch, IngestPipeline, Overloaded, Refused

PIPELINE_KEY = web.AppKey("pipeline", IngestPipeline)
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
AUTH_KEY = web.AppKey("auth", AuthPolicy)
DECODER_KEY = web.AppKey("decoder", Decoder)

_ENCODINGS = {encoding.value: encoding for encoding in Encoding}
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _HttpError(Exception):
    def __init__(self, status: int, code: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


def create_otlp_app(pipeline: IngestPipeline, max_body_bytes: int, decoder: Decoder, auth: AuthPolicy = NO_AUTH,
                    body_timeout_s: float = ListenerLimits.body_timeout_s) -> web.Application:
    """The OTLP/HTTP app; its lifetime owns the pipeline's background tasks. A body still
    arriving `body_timeout_s` after its head closes the connection (mlscope.listener); `decoder`
    decides where a body is decoded (collector/decoding.py)."""
    # The raw body is held to the same limit as the decompressed one: gzip never makes an OTLP
    # request bigger, and anything larger must not even be buffered.
    app = web.Application(client_max_size=max_body_bytes)
    add_body_deadline(app, body_timeout_s)
    app[PIPELINE_KEY] = pipeline
    app[MAX_BODY_KEY] = max_body_bytes
    app[AUTH_KEY] = auth
    app[DECODER_KEY] = decoder
    app[PROTOCOL_ERROR_BODY] = _status_body
    app.cleanup_ctx.append(_pipeline_lifetime)
    app.router.add_post("/v1/traces", _handler(TRACES))
    app.router.add_post("/v1/metrics", _handler(METRICS))
    return app


async def _pipeline_lifetime(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[PIPELINE_KEY]
    await pipeline.start()
    yield
    await pipeline.close()


def _handler(signal: Signal) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def export(request: web.Request) -> web.Response:
        encoding = _ENCODINGS.get(request.content_type)
        try:
            _authorize(request)
            if encoding is None:
                raise _HttpError(
                    415,
                    code_pb2.INVALID_ARGUMENT,
                    f"unsupported Content-Type {request.content_type!r}: "
                    "use application/x-protobuf or application/json",
                )
            body = await _read_body(request, request.app[MAX_BODY_KEY])
            decoded, payload = await request.app[DECODER_KEY].run(
                len(body), decode_body, signal, body, encoding, _may_write_evaluations(request))
            await request.app[PIPELINE_KEY].submit(Batch(signal.name, decoded, payload))
        except MalformedRequest as exc:
            return _status_response(_HttpError(400, code_pb2.INVALID_ARGUMENT, str(exc)), encoding)
        except Overloaded as exc:
            return _status_response(_HttpError(429, code_pb2.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s), encoding)
        except Refused as exc:
            return _status_response(_HttpError(503, code_pb2.UNAVAILABLE, str(exc), exc.retry_after_s), encoding)
        except _HttpError as exc:
            return _status_response(exc, encoding)
        return _message_response(200, signal.response(decoded), encoding)

    return export


def _authorize(request: web.Request) -> None:
    verdict = request.app[AUTH_KEY].check(request.headers.get("Authorization"), Scope.INGEST)
    if verdict is Verdict.UNAUTHENTICATED:
        raise _HttpError(401, code_pb2.UNAUTHENTICATED, "an ingest token is required (Authorization: Bearer <token>)")
    if verdict is Verdict.FORBIDDEN:
        raise _HttpError(403, code_pb2.PERMISSION_DENIED, "this token lacks the ingest scope")


def _may_write_evaluations(request: web.Request) -> bool:
    verdict = request.app[AUTH_KEY].check(request.headers.get("Authorization"), Scope.PREDICTOR)
    return verdict is Verdict.ALLOWED


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    too_large = _HttpError(413, code_pb2.RESOURCE_EXHAUSTED, f"request body exceeds {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large from exc
    content_encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if content_encoding == "identity":
        return body
    if content_encoding != "gzip":
        raise _HttpError(415, code_pb2.INVALID_ARGUMENT, f"unsupported Content-Encoding {content_encoding!r}: use gzip")
    inflater = zlib.decompressobj(_GZIP_WBITS)
    try:
        # max_length stops inflating one byte past the limit: a gzip bomb never expands in memory.
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise MalformedRequest(f"body is not valid gzip: {exc}") from exc
    if len(inflated) > max_bytes:
        raise _HttpError(413, code_pb2.RESOURCE_EXHAUSTED, f"decompressed request body exceeds {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise MalformedRequest("body is not one complete gzip stream")
    return inflated


def _status_body(status: int, message: str) -> dict[str, object]:
    """A request aiohttp could not parse, answered as a google.rpc.Status in JSON (its encoding
    is unknown: the content type was not read)."""
    code = code_pb2.INVALID_ARGUMENT if status < 500 else code_pb2.INTERNAL
    return json_format.MessageToDict(status_pb2.Status(code=code, message=message))


def _status_response(error: _HttpError, encoding: Encoding | None) -> web.Response:
    response = _message_response(error.status, status_pb2.Status(code=error.code, message=str(error)), encoding)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(math.ceil(error.retry_after_s))
    return response


def _message_response(status: int, message: Message, encoding: Encoding | None) -> web.Response:
    if encoding is Encoding.PROTOBUF:
        return web.Response(status=status, body=message.SerializeToString(), content_type=Encoding.PROTOBUF.value)
    return web.Response(status=status, text=json_format.MessageToJson(message, indent=None), content_type=Encoding.JSON.value)
