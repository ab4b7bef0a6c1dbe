"""The collector's settings, one frozen value shared by its parts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlscope.conventions import LOOPBACK, OTLP_GRPC_PORT, OTLP_HTTP_PORT, SPOOL_DIR, data_dir
from mlscope.listener import ListenerLimits

NO_GRPC = -1


def default_spool_dir(store_url: str, env: Mapping[str, str] = os.environ) -> str:
    """`<data dir>/spool/<hash of the store URL>`: one spool per store, so that collectors in
    front of different stores never replay each other's spans. `store_url` is a Store's `url`,
    which carries no password."""
    return os.path.join(data_dir(env), SPOOL_DIR, hashlib.sha256(store_url.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class CollectorConfig:
    host: str = LOOPBACK
    http_port: int = OTLP_HTTP_PORT  # 0 picks a free port
    grpc_port: int = OTLP_GRPC_PORT  # 0 picks a free port; NO_GRPC (-1) runs no gRPC server
    spool_dir: str | None = None  # None: default_spool_dir of the store
    max_body_bytes: int = 16 * 2**20  # per request, after decompression (HTTP and gRPC)
    max_spool_bytes: int = 1 * 2**30
    flush_rows: int = 20_000  # flush as soon as this many rows are pending ...
    flush_interval_s: float = 0.02  # ... or this long after the first one arrived
    # Beyond this many decoded rows awaiting the store, new requests are answered 429 /
    # RESOURCE_EXHAUSTED: this bounds the collector's memory (docs/PERFORMANCE.md sizes a row).
    max_pending_rows: int = 200_000
    replay_interval_s: float = 1.0  # how often the spool is retried while it holds files
    overloaded_retry_after_s: float = 1.0  # Retry-After of a 429
    unavailable_retry_after_s: float = 5.0  # Retry-After of a 503 (store down and spool full)
    # Slow and numerous clients (mlscope.listener): the header timeout is also gRPC's handshake
    # timeout, max_connections holds for each port.
    listener: ListenerLimits = field(default_factory=ListenerLimits)
    # A request body larger than this (HTTP, or gRPC message) is parsed and decoded in a worker
    # thread, at most `decode_threads` at once (more wait their turn), so that the collector's
    # event loop keeps reading and answering other requests meanwhile; a smaller one (a few
    # hundred spans at most) is decoded inline, where the hop to a thread would cost more than
    # the loop time it frees. The limit sits below a typical exporter's batch: decoding those in
    # threads shortened the tail of serve's /healthz beside ingest (docs/PERFORMANCE.md, Ingest).
    decode_inline_max_bytes: int = 64 * 2**10
    decode_threads: int = 2
    grpc_max_streams_per_connection: int = 100
    grpc_max_concurrent_rpcs: int = 1_000  # over the whole server; more: RESOURCE_EXHAUSTED
