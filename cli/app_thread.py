"""An aiohttp app served on an event loop of its own, in a thread of its own.

`mlscope serve` runs the query API and viewer this way beside the collector: the collector's loop
decodes OTLP bodies and batches inserts, and a request to the API (/healthz included) then waits
for the GIL (a switch interval at a time), never for a whole step of the collector's loop. Both
sides share the one Store, which is thread-safe.

While it serves, the process's garbage collector is set for ingest (`serving_gc`): a collection
holds the GIL from start to end, so it stops the API's thread as well as the collector's.

    served = AppThread("mlscope-query")
    port = await served.start(make_app, limits, host, port)  # the app is built on its own loop
    await served.wait()   # returns once stopped; raises what ended the thread's loop otherwise
    await served.stop()   # the app's cleanup runs on its loop, then the thread ends
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from aiohttp import web

from mlscope.listener import GuardedSite, ListenerLimits, listener_runner


# Young container objects (net of those freed) that start a collection; CPython's default is 700.
# The collector keeps two lists per span alive until the store has the batch (tens of thousands at
# a time), so at 700 young collections come every few milliseconds and promote those lists to the
# old generation, which then fills and is collected whole many times a minute. A threshold above
# what ingest keeps in flight lets the lists die young, and the young collection stays short.
SERVING_GC_THRESHOLD = 50_000


@dataclass(frozen=True)
class GcSettings:
    thresholds: tuple[int, int, int]


def serving_gc() -> GcSettings:
    """Sets the garbage collector for a serving process and returns the settings it replaced: what
    is alive now (modules, the apps, the store) is collected once and frozen, so that no later
    collection walks it again, and young collections wait for SERVING_GC_THRESHOLD objects."""
    previous = GcSettings(gc.get_threshold())
    gc.collect()  # garbage frozen now would never be freed
    gc.freeze()
    young = previous.thresholds[0]
    if young:  # 0: collections are off, and stay so
        gc.set_threshold(max(young, SERVING_GC_THRESHOLD), *previous.thresholds[1:])
    return previous


def restore_gc(previous: GcSettings) -> None:
    """Undoes `serving_gc`: what was frozen is collectable again, the thresholds are as before."""
    gc.unfreeze()
    gc.set_threshold(*previous.thresholds)


class AppThread:
    def __init__(self, name: str) -> None:
        self._name = name
        # Made here, run in the thread: stop() can reach the loop from the moment start() began.
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # bound to the thread's loop on first wait
        self._bound: Future[int] = Future()
        self._ended: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self._gc: GcSettings | None = None

    async def start(self, make_app: Callable[[], web.Application], limits: ListenerLimits, host: str,
                    port: int) -> int:
        """Builds `make_app()` on the thread's loop and serves it on `host:port` behind `limits`;
        returns the bound port, or raises why it could not bind (the thread has ended then).
        Once bound, the process's garbage collector is set for serving until stop()."""
        self._thread = threading.Thread(target=self._run, args=(make_app, limits, host, port), name=self._name)
        self._thread.start()
        # Shielded: a waiter cancelled must not cancel the thread's own futures.
        bound = await asyncio.shield(asyncio.wrap_future(self._bound))
        self._gc = serving_gc()
        return bound

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
        if self._gc is not None:
            restore_gc(self._gc)
            self._gc = None
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
