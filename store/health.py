"""A store's health as /readyz reports it, answered within a deadline whatever the store does.

A paused or overloaded server can hold a ping for the driver's whole receive timeout; a readiness
probe must not wait that long, nor start one more hung ping per request. So one worker thread
pings, one ping at a time, and `check` waits at most its deadline: past it, the answer is the
last state the store showed and how long ago, and the ping still running updates it when it ends.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from .errors import StoreError

READY_DEADLINE_S = 1.0


@dataclass(frozen=True)
class Health:
    ok: bool
    error: str  # "" when ok
    age_s: float  # how long ago the store showed this state (0: a ping just ended)


@dataclass(frozen=True)
class _Observed:
    ok: bool
    error: str
    at: float  # monotonic


class HealthProbe:
    def __init__(self, ping: Callable[[], None]) -> None:
        self._ping = ping
        self._last: _Observed | None = None
        self._in_flight: Future[None] | None = None
        self._lock = threading.Lock()
        self._pings: queue.SimpleQueue[Future[None]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    async def check(self, deadline_s: float = READY_DEADLINE_S) -> Health:
        """The store's state: from a ping that ends within `deadline_s`, else the last known one
        (never pinged yet: not ok)."""
        with self._lock:
            if self._in_flight is None or self._in_flight.done():
                self._in_flight = Future()
                self._pings.put(self._in_flight)
                if self._worker is None:
                    # A daemon: a ping hung on a paused server must not hold up the process's exit.
                    self._worker = threading.Thread(target=self._ping_forever, name="mlscope-store-ping", daemon=True)
                    self._worker.start()
            in_flight = self._in_flight
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(in_flight)), deadline_s)
        except TimeoutError:
            pass
        last = self._last
        if last is None:
            return Health(False, f"the store has not answered a ping within {deadline_s} s", 0.0)
        return Health(last.ok, last.error, time.monotonic() - last.at)

    def _ping_forever(self) -> None:
        while True:
            done = self._pings.get()
            try:
                self._ping()
                self._last = _Observed(True, "", time.monotonic())
            except StoreError as exc:
                self._last = _Observed(False, str(exc), time.monotonic())
            except Exception as exc:  # whatever the driver raises, the probe must keep answering
                self._last = _Observed(False, f"{type(exc).__name__}: {exc}", time.monotonic())
            done.set_result(None)
