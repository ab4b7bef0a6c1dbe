"""The settler: fills the windowed read's cache (span_depths and its pyramid, windows.depth_fill)
of big traces in the background once they have gone quiet, so that the viewer's first windowed
read of a finished run finds it ready instead of treeing every span (seconds on a 1M-span trace).

It runs in the one process per store that writes (the one that mounts dispatch: `serve`, or
`query` without --no-dispatch), as a task of the query app (create_query_app's
`fill_window_caches`). Fills go through the same lock as the windowed read's, one at a time, in a
worker thread. A trace the viewer reads whole (SettlerPolicy.warm_max_spans) then gets its
whole-trace answer made too (the app's `warm`: api.compact_answer into the app's bounded cache of
compact forms), so its first open after the run is answered from that cache.

Quiet is judged by arrival, not by the spans' own times: a trace is quiet once its row count in
span_rows (what a fill is keyed by) has stayed the same for `quiet_s` as this process saw it. The
trace index's last end is the agents' clock: skewed clocks, a spool replay or a late export bring
spans whose ends say nothing of when they arrived. Each poll first counts span_rows' rows (from
the parts' metadata, or on older servers the narrowest column); only when that changed does it
look for big traces without a fill (one pass over span_rows' trace ids, at most
SettlerPolicy.scan_share of the time), so an idle store costs one count a poll. Shutdown waits
for the fill under way, if any (a cut fill would be harmless, never read, but its rows would
stay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from mlscope.listener import RateLimitFilter

from .reader import TraceReader
from .windows import PYRAMID_WAIT_NS, depth_fill

log = logging.getLogger(__name__)
# A store that fails every poll would log a line every poll_s.
log.addFilter(RateLimitFilter(lines_per_interval=5, interval_s=60.0))


@dataclass(frozen=True)
class SettlerPolicy:
    """Which traces the settler fills, and when."""

    # A first windowed read of a trace this size trees and fills in well under a second; the
    # viewer reads windows only past 200k spans, but API clients read windows of smaller traces.
    min_spans: int = 50_000
    # Exporters flush every few seconds while a run goes on; this long without a new row, it
    # has most likely ended (if not, the trace is filled again once quiet again).
    quiet_s: float = 5.0
    poll_s: float = 2.0
    # A trace filled with at most this many rows also gets the viewer's whole-trace answer made
    # (the compact form, api.compact_answer), so its first open after the run is a cache hit: the
    # viewer reads a trace whole up to 200,000 spans (app.js WINDOWED_OVER), windows past that.
    warm_max_spans: int = 200_000
    # A fill that failed is tried again (for the same row count) only this much later.
    retry_s: float = 60.0
    # The scan for unfilled traces reads every row's trace id: on a big store that is ingesting,
    # it runs at most this share of the time (a trace whose count it has not seen change may then
    # look quiet: a fill first checks the trace's count).
    scan_share: float = 0.1


@dataclass(frozen=True)
class Seen:
    """A trace's row count as the settler saw it, and since when (monotonic seconds)."""

    span_count: int
    since_s: float


@dataclass(frozen=True)
class Settled:
    seen: dict[str, Seen]  # every trace still waiting for its fill
    ready: list[tuple[str, int]]  # (trace id, row count) to fill now, quiet longest first


def settle(unfilled: Mapping[str, int], seen: Mapping[str, Seen], now_s: float, quiet_s: float,
           held_back: Mapping[tuple[str, int], float] | None = None) -> Settled:
    """Given the big traces without a fill for their row count (`unfilled`, trace id -> count)
    and what was `seen` of them before: each one's count and since when it has been that, and
    those quiet for at least `quiet_s`, except the (trace, count) pairs `held_back` until a later
    time (a failed fill). A trace no longer unfilled is forgotten; one whose count changed starts
    over."""
    held_back = held_back or {}
    now_seen = {}
    for trace_id, span_count in unfilled.items():
        before = seen.get(trace_id)
        now_seen[trace_id] = before if before is not None and before.span_count == span_count else Seen(span_count, now_s)
    ready = sorted((entry.since_s, trace_id, entry.span_count) for trace_id, entry in now_seen.items()
                   if now_s - entry.since_s >= quiet_s and held_back.get((trace_id, entry.span_count), now_s) <= now_s)
    return Settled(now_seen, [(trace_id, span_count) for _, trace_id, span_count in ready])


def warms(span_count: int, policy: SettlerPolicy) -> bool:
    """Whether a trace just filled at `span_count` rows gets its whole-trace answer made too: the
    viewer reads it whole (rows are never fewer than spans, so a trace of more rows may still be
    read whole; it is then read on its first open, as before)."""
    return span_count <= policy.warm_max_spans


Warm = Callable[[str, int], object]  # (trace id, row count): makes and keeps the trace's whole-trace answer


class Settler:
    """The settler's state between polls; `poll`, `fill` and `warm` block (run them in worker
    threads, one at a time)."""

    def __init__(self, reader: TraceReader, policy: SettlerPolicy, clock: Callable[[], float] = time.monotonic,
                 warm: Warm | None = None) -> None:
        self._reader = reader
        self._policy = policy
        self._clock = clock
        self._warm = warm
        self._stored_rows: int | None = None  # span_rows' row count when `_unfilled` was read
        self._next_scan_s = 0.0
        self._unfilled: dict[str, int] = {}
        self._seen: dict[str, Seen] = {}
        self._failed: dict[tuple[str, int], float] = {}  # (trace, count) -> when to try again

    def poll(self) -> list[tuple[str, int]]:
        """(trace id, row count) of the big traces to fill now."""
        stored_rows = int(self._reader.first_column("SELECT count() FROM span_rows")[0])
        started_s = self._clock()
        if stored_rows != self._stored_rows and started_s >= self._next_scan_s:
            # Rows only change with span_rows' count (an insert adds, a merge of copies removes).
            self._unfilled = self._reader.unfilled_traces(self._policy.min_spans, PYRAMID_WAIT_NS)
            self._stored_rows = stored_rows
            self._next_scan_s = started_s + (self._clock() - started_s) / self._policy.scan_share
            self._failed = {key: until for key, until in self._failed.items() if self._unfilled.get(key[0]) == key[1]}
        settled = settle(self._unfilled, self._seen, self._clock(), self._policy.quiet_s, self._failed)
        self._seen = settled.seen
        return settled.ready

    def fill(self, trace_id: str, span_count: int) -> bool:
        """Fills `trace_id` unless its row count is no longer `span_count` (it is not quiet: the
        next poll sees the new count); whether it did."""
        try:
            if self._reader.span_row_count(trace_id) != span_count:
                self._stored_rows = None
                return False
            depth_fill(self._reader, trace_id, span_count, whole=True)
        except Exception:
            self._failed[(trace_id, span_count)] = self._clock() + self._policy.retry_s
            raise
        self._unfilled.pop(trace_id, None)
        self._seen.pop(trace_id, None)
        return True

    def warm(self, trace_id: str, span_count: int) -> None:
        """Makes the whole-trace answer of `trace_id`, just filled at `span_count` rows, when warms()
        says so (with a `warm` given)."""
        if self._warm is not None and warms(span_count, self._policy):
            self._warm(trace_id, span_count)

    async def run(self, stop: asyncio.Event) -> None:
        """Polls every `poll_s` and fills what is ready, until `stop` is set; then returns once
        the poll or fill under way has ended (it has the store to itself until then)."""
        while not stop.is_set():
            try:
                for trace_id, span_count in await asyncio.to_thread(self.poll):
                    if stop.is_set():
                        break
                    try:
                        filled = await asyncio.to_thread(self.fill, trace_id, span_count)
                    except Exception:
                        log.exception("filling the window cache of trace %s (%d rows) failed", trace_id, span_count)
                        continue
                    if filled and not stop.is_set():
                        try:
                            await asyncio.to_thread(self.warm, trace_id, span_count)
                        except Exception:
                            log.exception("making the whole-trace answer of trace %s (%d rows) failed", trace_id, span_count)
            except Exception:
                log.exception("looking for traces whose window cache to fill failed")
            try:
                await asyncio.wait_for(stop.wait(), self._policy.poll_s)
            except TimeoutError:
                pass


def settler_context(reader: TraceReader, policy: SettlerPolicy,
                    warm: Warm | None = None) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup_ctx running a Settler from the app's startup to its cleanup."""

    async def settling(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(Settler(reader, policy, warm=warm).run(stop))
        yield
        stop.set()
        await task

    return settling
