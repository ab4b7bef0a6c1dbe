"""An aiohttp app served on an event loop of its own, in a thread of its own.

`mlscope serve` runs the query API and viewer this way beside the collector: the collector's loop
decodes OTLP bodies and batches inserts, and a request to the API (/healthz included) then waits
for the GIL (a switch interval at a time), never for a whole step of the collector's loop. Both
sides share the one Store, which is thread-safe.

    served = AppThread("mlscope-query")
    port = await served.start(make_app, limits, host, port)  # the app is built on its own loop
    await served.wait()   # returns once stopped; raises what ended the thread's loop otherwise
    await served.stop()   # the app's cleanup runs on its loop, then the thread ends
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future

from aiohttp import web

from mlscope.listener import GuardedSite, ListenerLimits, listener_runner


class AppThread:
    def __init__(self, name: str) -> None:
        self._name = name
        # Made here, run in the thread: stop() can reach the loop from the moment start() began.
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # bound to the thread's loop on first wait
        self._bound: Future[int] = Future()
        self._ended: Future[None] = Future()
        self._thread: threading.Thread | None = None

    async def start(self, make_app: Callable[[], web.Application], limits: ListenerLimits, host: str,
                    port: int) -> int:
        """Builds `make_app()` on the thread's loop and serves it on `host:port` behind `limits`;
        returns the bound port, or raises why it could not bind (the thread has ended then)."""
        self._thread = threading.Thread(target=self._run, args=(make_app, limits, host, port), name=self._name)
        self._thread.start()
        # Shielded: a waiter cancelled must not cancel the thread's own futures.
        return await asyncio.shield(asyncio.wrap_future(self._bound))

    async def wait(self) -> None:
        """Returns when the thread's loop has ended after stop(); raises whatever else ended it."""
        await asyncio.shield(asyncio.wrap_future(self._ended))

    async def stop(self) -> None:
        """Stops serving: in-flight requests finish and the app's cleanup runs on its own loop;
        returns once the thread has ended, raising what ended it after it had bound its port
        (start() raised the error of a thread that never bound one)."""
        if self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the thread has ended already
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join)
        if self._bound.exception() is None:
            self._ended.result()

    def _run(self, make_app: Callable[[], web.Application], limits: ListenerLimits, host: str, port: int) -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: self._loop) as runner:
                runner.run(self._serve(make_app, limits, host, port))
        except BaseException as exc:  # handed to the thread that waits on start() or wait()
            if not self._bound.done():
                self._bound.set_exception(exc)
            self._ended.set_exception(exc)
            return
        if not self._bound.done():
            self._bound.set_exception(RuntimeError(f"{self._name} was stopped before it bound its port"))
        self._ended.set_result(None)

    async def _serve(self, make_app: Callable[[], web.Application], limits: ListenerLimits, host: str,
                     port: int) -> None:
        runner = listener_runner(make_app(), limits, access_log=None)
        await runner.setup()
        try:
            await GuardedSite(runner, host, port, limits.max_connections).start()
            self._bound.set_result(runner.addresses[0][1])
            await self._stop.wait()
        finally:
            await runner.cleanup()
