"""Between the request handlers and the store: coalescing, durability, back-pressure.

Handlers `await submit(batch)`; it returns only once the batch is durable — inserted into the
store, or written to the on-disk spool when the store refused it — and raises `Overloaded` or
`Unavailable` (answered 429 / 503 with Retry-After) when it cannot take the batch now. Nothing
is acknowledged before it is durable, and nothing submitted is dropped without an error.

A single flusher task merges what many requests submitted and does one `store.insert` per table
per flush, when enough rows are pending or `flush_interval_s` after the first one arrived. A
replayer task empties the spool into the store at start-up and whenever it holds files.
Store calls run on one worker thread: inserts stay ordered, the event loop stays free, and the
server backend keeps a single connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlscope.store import Store, StoreError, StoreUnavailable
from mlscope.store.model import Columns, empty_columns, extend_columns

from .config import CollectorConfig
from .otlp import METRIC_TABLE, SIGNALS, SPAN_TABLE, Decoded, Encoding, MalformedRequest
from .spool import CorruptSpoolFile, Spool, SpoolFile, SpoolFull

log = logging.getLogger(__name__)

# A reachable store that refuses the same spool file this many replays in a row will not take it.
MAX_REFUSALS = 3


class Refused(Exception):
    """The pipeline cannot take a batch now; the client should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(Refused):
    """Too much is pending in memory (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""


class Unavailable(Refused):
    """The store is down and the spool is full, or the collector is stopping (HTTP 503, gRPC
    UNAVAILABLE)."""


@dataclass(frozen=True)
class Batch:
    """One request's rows, and the same request as OTLP protobuf for the spool."""

    signal: str
    decoded: Decoded
    payload: bytes


@dataclass(frozen=True)
class _Spooled:
    """One request read back from the spool."""

    payload: bytes
    decoded: Decoded


@dataclass(frozen=True)
class _Waiting:
    batch: Batch
    done: asyncio.Future[None]


class IngestPipeline:
    def __init__(self, store: Store, spool: Spool, config: CollectorConfig) -> None:
        self._store = store
        self._spool = spool
        self._config = config
        self._pending: list[_Waiting] = []
        self._unacknowledged = {table: 0 for table in (SPAN_TABLE, METRIC_TABLE)}
        self._store_ok = True
        self._replay_error = ""
        """The last replay pass's failure other than the store's ("" once a pass succeeds)."""
        self._closed = False
        self._draining = False
        self._has_pending = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlscope-store")
        self._tasks: list[asyncio.Task[None]] = []
        self._refusals: dict[Path, int] = {}  # spool file -> consecutive refusals by a reachable store
        self._set_aside_rows = {table: 0 for table in (SPAN_TABLE, METRIC_TABLE)}  # since start

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="mlscope-flusher"),
            asyncio.create_task(self._replay_loop(), name="mlscope-replayer"),
        ]

    def drain(self) -> None:
        """From now on flushes without waiting for the timer: the collector is stopping, and
        in-flight requests should not wait for it."""
        self._draining = True
        self._flush_now.set()

    async def close(self) -> None:
        """Refuses new batches, flushes every pending one, then stops the background tasks."""
        self._closed = True
        self._draining = True
        self._has_pending.set()
        self._flush_now.set()
        flusher, replayer = self._tasks
        await flusher
        replayer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replayer
        # Waits (off the loop) for a replay insert already running in the store thread.
        await asyncio.get_running_loop().run_in_executor(None, self._store_thread.shutdown)
        self._spool.close()

    def status(self) -> dict[str, int | bool | str]:
        return {
            "pending_spans": self._unacknowledged[SPAN_TABLE],
            "pending_metric_points": self._unacknowledged[METRIC_TABLE],
            "spooled_bytes": self._spool.bytes,
            "store_ok": self._store_ok,
            "replay_error": self._replay_error,
            "set_aside_spans": self._set_aside_rows[SPAN_TABLE],
            "set_aside_metric_points": self._set_aside_rows[METRIC_TABLE],
            "set_aside_files": self._spool.set_aside_files,
        }

    async def submit(self, batch: Batch) -> None:
        """Returns once `batch` is durable; raises Refused when it cannot be taken now."""
        rows = batch.decoded.rows
        if self._closed:
            raise Unavailable("the collector is shutting down", self._config.unavailable_retry_after_s)
        if not rows:
            return
        if not self._store_ok and not self._spool.has_room(len(batch.payload)):
            raise Unavailable(
                "the store is unavailable and the spool is full", self._config.unavailable_retry_after_s
            )
        unacknowledged = sum(self._unacknowledged.values())
        # An idle pipeline takes any batch, however large: otherwise it could never be sent.
        if unacknowledged and unacknowledged + rows > self._config.max_pending_rows:
            raise Overloaded(
                f"{unacknowledged} rows are waiting for the store", self._config.overloaded_retry_after_s
            )
        waiting = _Waiting(batch, asyncio.get_running_loop().create_future())
        self._pending.append(waiting)
        self._unacknowledged[batch.decoded.table] += rows
        self._has_pending.set()
        if unacknowledged + rows >= self._config.flush_rows:
            self._flush_now.set()
        # A client that disconnects cancels this future; the flusher still stores the batch.
        await waiting.done

    # --- flushing -----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while not (self._closed and not self._pending):
            await self._has_pending.wait()
            if not self._draining and not self._flush_now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.flush_interval_s):
                        await self._flush_now.wait()
            taken, self._pending = self._pending, []
            self._has_pending.clear()
            self._flush_now.clear()
            by_table: dict[str, list[_Waiting]] = defaultdict(list)
            for waiting in taken:
                by_table[waiting.batch.decoded.table].append(waiting)
            for table, group in by_table.items():
                await self._flush_table(table, group)

    async def _flush_table(self, table: str, group: list[_Waiting]) -> None:
        try:
            await self._make_durable(table, [waiting.batch for waiting in group])
            failure: BaseException | None = None
        except Exception as exc:  # resolved into every waiting request: the flusher must live on
            if not isinstance(exc, Refused):
                log.exception("flush of %d %s batches failed", len(group), table)
            failure = exc
        for waiting in group:
            self._unacknowledged[table] -= waiting.batch.decoded.rows
            if waiting.done.done():
                continue
            if failure is None:
                waiting.done.set_result(None)
            else:
                waiting.done.set_exception(failure)

    async def _make_durable(self, table: str, batches: list[Batch]) -> None:
        if self._store_ok:
            try:
                await self._in_store_thread(self._store.insert, table, _merged(table, [batch.decoded for batch in batches]))
                return
            except StoreError as exc:
                # Until the replayer gets a spool file into the store, flushes go to the spool.
                self._store_ok = False
                log.warning("store insert into %s failed (%s); spooling", table, exc)
        try:
            await asyncio.to_thread(self._spool.write, batches[0].signal, [batch.payload for batch in batches])
        except SpoolFull as exc:
            raise Unavailable(f"the store is unavailable and {exc}", self._config.unavailable_retry_after_s) from exc
        except OSError as exc:
            log.error("spool write failed: %s", exc)
            raise Unavailable(
                f"the store is unavailable and the spool write failed: {exc}", self._config.unavailable_retry_after_s
            ) from exc

    # --- replaying the spool ------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        """Replays the spool every `replay_interval_s` for the collector's whole life: a failure
        other than the store's (a file system error, a bug) is logged once per distinct error
        and shown in `status()["replay_error"]` (/readyz answers 503), and the next pass tries
        again, so acknowledged spans are never left in the spool by a dead task."""
        while True:
            try:
                await self.replay_spool()
                self._replay_error = ""
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != self._replay_error:
                    log.exception("spool replay failed; retrying every %s s", self._config.replay_interval_s)
                self._replay_error = error
            await asyncio.sleep(self._config.replay_interval_s)

    async def replay_spool(self) -> None:
        """Inserts spooled files oldest first, deleting each once stored; stops at the first
        store failure (the next pass retries). With an empty spool after a failure, a ping
        decides when inserts may go to the store again."""
        spooled_files = await asyncio.to_thread(self._spool.files)
        try:
            if not spooled_files and not self._store_ok:
                await self._in_store_thread(self._store.ping)
            for spooled in spooled_files:
                await self._in_store_thread(self._replay_file, spooled)
                self._store_ok = True
        except StoreError as exc:
            self._store_ok = False
            log.info("store still unavailable or refusing (%s); %d spooled bytes wait", exc, self._spool.bytes)
            return
        self._store_ok = True

    def _replay_file(self, spooled: SpoolFile) -> None:
        """Stores one spool file's requests, or raises StoreError. A file the store refuses is
        split down to the requests it refuses alone; when a reachable store has refused the file
        `MAX_REFUSALS` times in a row, those requests alone are set aside (counted, logged,
        kept as `.rejected`) and the file's other requests stay stored, so that one client's
        bad request can neither block the files behind it nor take innocent requests with it."""
        signal = SIGNALS[spooled.signal]
        try:
            payloads = self._spool.read(spooled)
            requests = [_Spooled(payload, signal.decode(signal.parse(payload, Encoding.PROTOBUF)))
                        for payload in payloads]
        except (MalformedRequest, CorruptSpoolFile) as exc:
            self._spool.quarantine(spooled, str(exc))
            return
        refused = self._insert_isolating_refusals([request for request in requests if request.decoded.rows])
        if not refused:
            self._refusals.pop(spooled.path, None)
            self._spool.remove(spooled)
            return
        self._store.ping()  # a store that went away refused nothing: StoreUnavailable stops the pass
        refusals = self._refusals.get(spooled.path, 0) + 1
        first_error = refused[0][1]
        if refusals < MAX_REFUSALS:
            self._refusals[spooled.path] = refusals
            raise first_error
        self._refusals.pop(spooled.path, None)
        for request, _ in refused:
            self._set_aside_rows[request.decoded.table] += request.decoded.rows
        self._spool.set_aside(
            spooled, [request.payload for request, _ in refused],
            f"{sum(request.decoded.rows for request, _ in refused)} rows refused {refusals} times: {first_error}")

    def _insert_isolating_refusals(self, requests: list[_Spooled]) -> list[tuple[_Spooled, StoreError]]:
        """Inserts `requests` (one table's), halving a refused group until each refusal is one
        request's; returns those requests with the store's reason. StoreUnavailable propagates."""
        if not requests:
            return []
        table = requests[0].decoded.table
        try:
            self._store.insert(table, _merged(table, [request.decoded for request in requests]))
            return []
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if len(requests) == 1:
                return [(requests[0], exc)]
        half = len(requests) // 2
        return self._insert_isolating_refusals(requests[:half]) + self._insert_isolating_refusals(requests[half:])

    async def _in_store_thread(self, function: Callable[..., object], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._store_thread, function, *args)


def _merged(table: str, requests: list[Decoded]) -> Columns:
    if len(requests) == 1:
        return requests[0].columns
    columns = empty_columns(table)
    for decoded in requests:
        extend_columns(columns, decoded.columns)
    return columns
