"""The collector: OTLP over HTTP and gRPC in, rows in the store out, a 200 only once durable.

    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=0, spool_dir="/data/spool"))
    await collector.start()          # collector.http_port / collector.grpc_port: the bound ports
    ...
    await collector.stop()           # flushes what is pending; the store stays open

Inside: `otlp` decodes (pure), `decoding` decides where (large bodies in worker threads),
`http_server` / `grpc_server` receive, `pipeline` batches into the store and falls back to the on-disk `spool` while the store is down.
"""

from __future__ import annotations

import grpc

from mlscope.auth import NO_AUTH, AuthPolicy
from mlscope.listener import GuardedSite, listener_runner
from mlscope.store import Store

from .config import NO_GRPC, CollectorConfig, default_spool_dir
from .decoding import Decoder
from .grpc_server import create_grpc_server
from .http_server import create_otlp_app
from .pipeline import IngestPipeline
from .spool import Spool

_GRPC_STOP_GRACE_S = 10.0


class Collector:
    """The OTLP/HTTP and OTLP/gRPC servers in front of one ingest pipeline; `auth` decides who
    may send (an `ingest` token on both)."""

    def __init__(self, store: Store, config: CollectorConfig, auth: AuthPolicy = NO_AUTH) -> None:
        self.config = config
        self.http_port = config.http_port
        self._auth = auth
        self.grpc_port = config.grpc_port
        spool_dir = config.spool_dir or default_spool_dir(store.url)
        self._pipeline = IngestPipeline(store, Spool(spool_dir, config.max_spool_bytes), config)
        self._decoder = Decoder(config.decode_inline_max_bytes, config.decode_threads)
        # auto_decompress off: http_server inflates gzip itself, bounded (see its docstring).
        self._runner = listener_runner(
            create_otlp_app(self._pipeline, config.max_body_bytes, self._decoder, auth, config.listener.body_timeout_s),
            config.listener, access_log=None, auto_decompress=False,
        )
        self._grpc: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Starts the pipeline (which replays the spool) and binds the ports."""
        await self._runner.setup()
        try:
            site = GuardedSite(self._runner, self.config.host, self.config.http_port,
                               self.config.listener.max_connections)
            await site.start()
            self.http_port = self._runner.addresses[0][1]
            if self.config.grpc_port != NO_GRPC:
                self._grpc = create_grpc_server(self._pipeline, self.config, self._auth, self._decoder)
                address = f"{self.config.host}:{self.config.grpc_port}"
                try:
                    self.grpc_port = self._grpc.add_insecure_port(address)
                except RuntimeError as exc:  # grpc's word for a port in use: told as the HTTP port's would be
                    raise OSError(f"cannot bind the OTLP/gRPC port {address}: {exc}") from exc
                await self._grpc.start()
        except BaseException:
            # A port already taken: leave no pipeline task or bound port behind.
            if self._grpc is not None:
                await self._grpc.stop(None)
            await self._runner.cleanup()
            self._decoder.close()
            raise

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish, flushes what is pending. The store is
        the caller's to close."""
        self._pipeline.drain()
        if self._grpc is not None:
            await self._grpc.stop(_GRPC_STOP_GRACE_S)
        # Stops the HTTP site, waits for its handlers, then the app's cleanup closes the pipeline.
        await self._runner.cleanup()
        self._decoder.close()

    def status(self) -> dict[str, int | bool | str]:
        """For /readyz: rows pending, spooled bytes, whether the store took the last insert."""
        return {**self._pipeline.status(), "http_port": self.http_port, "grpc_port": self.grpc_port}


__all__ = ["Collector", "CollectorConfig", "NO_GRPC"]
