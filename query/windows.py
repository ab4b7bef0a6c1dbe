"""The window cache: a trace's spans with their depths in the whole trace (a fill of span_depths,
made by query/depths.py from every row of the trace) and the pyramid built over them, which
window reads (GET /api/traces/{id}/window: read_window) and search draw from.

A trace's first windowed read makes its fill (depth_fill), answered before the fill is written
on the embedded store (from its rows in memory) and before its pyramid everywhere; one worker
thread per process then writes it and builds the pyramid, giving way to reads between its
statements (ReadsUnderWay). A trace that grows is answered from its latest fill while it is
filled again in the background (read_fill, RefillPolicy); replaced fills are deleted once no
read uses them. Blocking (the reader is); the HTTP layer runs these in worker threads.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from mlscope.store import Columns

from .depths import PYRAMID_SPANS_PER_BUCKET, pyramid_widths, span_depth_rows, tree_spans
from .reader import WINDOW_ATTRIBUTES, DepthFill, FillRow, TraceReader
from .timeline import ATTRIBUTE_COLUMN, WindowColumns

log = logging.getLogger(__name__)

# One fill of span_depths at a time in this process; fills by other processes at once are
# told apart by their fill ids (reader.span_depth_fill reads one).
_DEPTH_FILL = threading.Lock()


def new_fill_id() -> int:
    """A fill's id: the time it starts (ns; later fills have larger ids, which is how a fill tells
    the trace's earlier ones), its lowest 10 bits random so that processes starting together differ."""
    return time.time_ns() >> 10 << 10 | secrets.randbits(10)


def fill_span_depths(reader: TraceReader, trace_id: str, span_count: int,
                     spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET, pyramid_later: bool = False) -> DepthFill | None:
    """Reads and trees every span of `trace_id` and makes them a new fill for `span_count` rows,
    with its pyramid (pyramid_widths): stored at once, or with `pyramid_later`, the pyramid built
    in this process's pyramid worker once start_pyramids is called (the fill is read from its
    spans until then), and on a store that reads Arrow rows in-process (TraceReader.reads_unwritten)
    its spans written by that worker too, the fill read from its rows in memory until then
    (unwritten_rows). Returns that fill as it stands on return, or None when the trace has no
    span (any more). The fills it replaces are deleted RETIRE_AFTER_S after its pyramid is built."""
    made = _make_fill(reader, trace_id, span_count, spans_per_bucket)
    if made is None:
        return None
    if pyramid_later and reader.reads_unwritten:
        with _PENDING_LOCK:
            _UNWRITTEN[trace_id, span_count] = made
            _UNSTARTED.append(functools.partial(_write_and_build, reader, trace_id, made))
        return made.fill
    fill = _write(reader, trace_id, made)
    if pyramid_later:
        with _PENDING_LOCK:
            _UNSTARTED.append(functools.partial(_build_pyramid, reader, trace_id, fill, made.distinct_rows))
        return fill
    reader.store_pyramid(trace_id, fill, made.distinct_rows, READS.give_way)
    _retire_later(reader, trace_id, fill, made.distinct_rows)
    return replace(fill, pyramid_built=True)


@dataclass(frozen=True)
class MadeFill:
    """A new fill of a trace, not written yet (_make_fill)."""

    # Readable from `rows` (its pyramid not built): without pyramid widths, chosen as it is written.
    fill: DepthFill
    rows: pa.Table  # its span_depths rows
    distinct_starts: np.ndarray  # the starts of the distinct rows it is made of (copies left out), in no order
    spans_per_bucket: int

    @property
    def distinct_rows(self) -> int:
        return len(self.distinct_starts)

    def with_widths(self) -> DepthFill:
        """`fill` with its pyramid's widths (pyramid_widths), as it is written."""
        first, last = pyramid_widths(np.sort(self.distinct_starts), self.spans_per_bucket)
        return replace(self.fill, first_bucket_log2=first, last_bucket_log2=last)


def _make_fill(reader: TraceReader, trace_id: str, span_count: int,
               spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET) -> MadeFill | None:
    """A new fill of `trace_id` from its rows now, its pyramid not built, not written; None when
    the trace has no span (any more)."""
    fill_id = new_fill_id()
    spans = reader.window_spans(trace_id)
    if not spans.num_rows:
        return None
    treed = tree_spans(spans)
    # No pyramid widths yet (first > last); the duration classes its reads ask for, as the store would list them.
    fill = DepthFill(fill_id, span_count, 1, 0, pyramid_built=False, filled_ns=time.time_ns())
    rows = span_depth_rows(trace_id, fill, treed)
    classes = np.flatnonzero(np.bincount(rows["duration_bits"].to_numpy(), minlength=1))
    return MadeFill(replace(fill, duration_classes=tuple(map(int, classes))), rows,
                    np.delete(treed.spans["start_ns"].to_numpy(), treed.copies), spans_per_bucket)


def _write(reader: TraceReader, trace_id: str, made: MadeFill) -> DepthFill:
    """Writes `made` (readable, its pyramid not built); the fill written."""
    fill = made.with_widths()
    reader.store_span_depths(trace_id, fill, made.rows, made.distinct_rows)
    return fill


class ReadsUnderWay:
    """The window reads and searches under way in this process. A pyramid being built gives way
    to them between its statements (give_way): the embedded store runs one statement at a time,
    and a read's few statements then run back to back instead of each waiting for one of the
    pyramid's (hundreds of ms each on a 1M-span trace)."""

    # Reads that keep coming (a user panning) still let the pyramid on at this pace.
    MAX_WAIT_S = 2.0
    # Even with no read under way: one waiting for the store (not counted yet) takes it meanwhile.
    PAUSE_S = 0.005

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def give_way(self) -> None:
        """Returns once no read is under way, or after MAX_WAIT_S."""
        time.sleep(self.PAUSE_S)
        with self._changed:
            self._changed.wait_for(lambda: not self._count, timeout=self.MAX_WAIT_S)


READS = ReadsUnderWay()


# The pyramids of fills made for a read, built once the read is answered (start_pyramids): one
# at a time, in the order their fills were made. Started before the read's own statements, they
# would hold the embedded store (one statement at a time) until the last. The same worker
# deletes the fills a new one replaces (_retire).
_PYRAMIDS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlscope-pyramid")
_UNSTARTED: list[Callable[[], None]] = []
# Fills made for a read and not written yet (fill_span_depths), by trace and row count: that read
# and those meanwhile are answered from their rows in memory. The embedded store takes about as
# long to write a big fill (sorting and compressing it) as to answer the read.
_UNWRITTEN: dict[tuple[str, int], MadeFill] = {}
_PENDING_LOCK = threading.Lock()  # _UNSTARTED and _UNWRITTEN


def start_pyramids() -> None:
    """Starts writing the fills made so far in this process for reads and building their pyramids."""
    with _PENDING_LOCK:
        unstarted = _UNSTARTED[:]
        _UNSTARTED.clear()
    for job in unstarted:
        _PYRAMIDS.submit(job)


def unwritten_rows(trace_id: str, fill: DepthFill) -> pa.Table | None:
    """The span_depths rows of `fill` while they are not written yet (fill_span_depths), else None."""
    with _PENDING_LOCK:
        made = _UNWRITTEN.get((trace_id, fill.span_count))
    return made.rows if made is not None and made.fill.fill == fill.fill else None


def _unwritten_fill(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows this process made and has not written yet, on
    reader.span_depth_fill's terms: one made over copies a retry wrote only while the trace's
    distinct rows are as many as then."""
    with _PENDING_LOCK:
        made = _UNWRITTEN.get((trace_id, span_count))
    if made is None or (made.distinct_rows != span_count and reader.distinct_rows(trace_id) != made.distinct_rows):
        return None
    return made.fill


def _unwritten_fills(trace_id: str) -> list[DepthFill]:
    """The fills of `trace_id`, of any row count, this process made and has not written yet."""
    with _PENDING_LOCK:
        return [made.fill for (trace, _), made in _UNWRITTEN.items() if trace == trace_id]


def _write_and_build(reader: TraceReader, trace_id: str, made: MadeFill) -> None:
    """Writes a fill made for a read, then builds its pyramid."""
    try:
        READS.give_way()
        fill = _write(reader, trace_id, made)
    except Exception:
        log.exception("writing trace %s's fill %d failed", trace_id, made.fill.fill)  # the next read fills it again
        return
    finally:
        with _PENDING_LOCK:
            # Unless a fill of the same count replaced it (made once the trace's copies were merged).
            if _UNWRITTEN.get((trace_id, made.fill.span_count)) is made:
                del _UNWRITTEN[trace_id, made.fill.span_count]
    _build_pyramid(reader, trace_id, fill, made.distinct_rows)


def _build_pyramid(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    try:
        reader.store_pyramid(trace_id, fill, distinct_rows, READS.give_way)
    except Exception:
        # Reads go on using the fill's spans; the settler remakes the fill once PYRAMID_WAIT_NS has passed.
        log.exception("building the pyramid of trace %s (fill %d) failed", trace_id, fill.fill)
        return
    _retire_later(reader, trace_id, fill, distinct_rows)


# A fill replaced by one whose pyramid is built is deleted this long after: a read that chose it
# just before (in this process or another) has long finished with it. One still being read in
# this process (_HELD) is deleted later.
RETIRE_AFTER_S = 30.0
_HELD: Counter[int] = Counter()  # fill id -> reads using it now, in this process
_RETIRING: dict[int, tuple[threading.Timer, TraceReader, str, DepthFill, int]] = {}  # by the replacing fill's id
_HELD_LOCK = threading.Lock()


def _retire_later(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    """Deletes the fills `fill` replaces (reader.retire_fills) RETIRE_AFTER_S from now, in the pyramid worker."""
    timer = threading.Timer(RETIRE_AFTER_S, lambda: _submit_retire(fill.fill))
    timer.daemon = True
    with _HELD_LOCK:
        _RETIRING[fill.fill] = (timer, reader, trace_id, fill, distinct_rows)
    timer.start()


def _submit_retire(fill_id: int) -> None:
    with _HELD_LOCK:
        job = _RETIRING.pop(fill_id, None)
    if job is not None:
        job[0].cancel()
        try:
            _PYRAMIDS.submit(_retire, *job[1:])
        except RuntimeError:  # the process is ending: the trace's next fill deletes them
            pass


def _retire(reader: TraceReader, trace_id: str, fill: DepthFill, distinct_rows: int) -> None:
    with _HELD_LOCK:
        held = [fill_id for fill_id, reads in _HELD.items() if reads and fill_id < fill.fill]
    try:
        reader.retire_fills(trace_id, fill, distinct_rows, keep=held)
    except Exception:
        # The next fill of the trace deletes them (every earlier fill of another count).
        log.exception("deleting the fills of trace %s that fill %d replaces failed", trace_id, fill.fill)
        return
    if held:
        _retire_later(reader, trace_id, fill, distinct_rows)


@contextmanager
def _holding(fill: DepthFill) -> Iterator[DepthFill]:
    """`fill`, not deleted in this process while the caller reads it."""
    with _HELD_LOCK:
        _HELD[fill.fill] += 1
    try:
        yield fill
    finally:
        with _HELD_LOCK:
            _HELD[fill.fill] -= 1
            if not _HELD[fill.fill]:
                del _HELD[fill.fill]


def pyramids_built() -> None:
    """Returns once the refills started so far in this process are made, the pyramids of its
    fills built (or failed) and the fills they replace deleted without waiting RETIRE_AFTER_S
    (for tests: a read under way may lose its fill)."""
    _REFILLS.submit(lambda: None).result()
    start_pyramids()
    _PYRAMIDS.submit(lambda: None).result()
    with _HELD_LOCK:
        due = list(_RETIRING)
    for fill_id in due:
        _submit_retire(fill_id)
    _PYRAMIDS.submit(lambda: None).result()


# A fill whose pyramid is still missing this long after its spans were written was left so by a
# process that ended first (a 1M-span trace's pyramid takes seconds): it is made again, whole.
PYRAMID_WAIT_NS = 120 * 10**9


@dataclass(frozen=True)
class RefillPolicy:
    """When a read of a trace that has grown since its latest fill (answered from that fill)
    starts a fill of the trace as it is now, in the background: once the latest fill, pyramid
    included, is `age_over_work` times as old as it took to make, and at least `min_age_s` old.
    A live run's trace then spends at most 1 / (1 + age_over_work) of the time being filled."""

    age_over_work: float = 2.0
    min_age_s: float = 1.0

    def due(self, latest: FillRow, now_ns: int) -> bool:
        """Whether a read at `now_ns` starts a refill of the trace whose latest fill is `latest`."""
        if not latest.pyramid_built:
            # Its pyramid is under way, unless the process building it ended (the settler remakes those).
            return now_ns - latest.filled_ns >= PYRAMID_WAIT_NS
        work_ns = max(0, latest.built_ns - latest.started_ns)
        return now_ns - latest.built_ns >= max(self.min_age_s * 1e9, self.age_over_work * work_ns)


REFILL_POLICY = RefillPolicy()
# Fills started ahead of the reads that will want them (start_fill): one at a time.
_REFILLS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlscope-refill")
_REFILLING: set[str] = set()  # traces with a fill submitted and not yet made, in this process
_REFILLING_LOCK = threading.Lock()


def start_fill(reader: TraceReader, trace_id: str, first: bool = False) -> bool:
    """Submits a fill of `trace_id` at its row count then, unless that has a fill (or one is under
    way in this process), made as a window read makes one (depth_fill): for a trace that grew
    since the fill its reads are answered from (read_fill, when REFILL_POLICY says), and with
    `first` for a trace about to be read by windows that has no fill yet (a whole read of it was
    answered 413); a trace with a fill is filled again only by the reads' policy, however often
    it is read whole. Whether it submitted one."""
    with _REFILLING_LOCK:
        if trace_id in _REFILLING:
            return False
        _REFILLING.add(trace_id)
    _REFILLS.submit(_refill_submitted, reader, trace_id, first)
    return True


# Fills made ahead of reads wait while this many fills made here are not written yet: each holds
# its rows in memory (~150 bytes a span), and the reads that come make their own if need be.
MAX_UNWRITTEN = 2


def _refill_submitted(reader: TraceReader, trace_id: str, first: bool) -> None:
    try:
        READS.give_way()  # work ahead of reads comes after the reads under way
        with _PENDING_LOCK:
            busy = len(_UNWRITTEN) >= MAX_UNWRITTEN
        if not busy and not (first and (reader.trace_fills(trace_id) or _unwritten_fills(trace_id))):
            _refill(reader, trace_id)
    except Exception:
        log.exception("filling trace %s ahead of its reads failed", trace_id)
    finally:
        with _REFILLING_LOCK:
            _REFILLING.discard(trace_id)


def _refill(reader: TraceReader, trace_id: str) -> None:
    """Fills `trace_id` at its row count now, unless that has a fill, then writes it (when it was
    not) and builds its pyramid."""
    span_count = reader.span_row_count(trace_id)
    if span_count and depth_fill(reader, trace_id, span_count) is not None:
        start_pyramids()


def read_window(reader: TraceReader, trace_id: str, window: tuple[int, int], resolution_ns: int) -> WindowColumns | None:
    """The spans of `trace_id` overlapping `window` as drawn at `resolution_ns` a pixel, merged by the
    store (reader.window_entries), with the viewer's attributes as ATTRIBUTE_COLUMN columns; depth
    is the span's in the whole trace. Read from one fill of span_depths (read_fill): the first
    windowed read of a trace reads and trees every span once to fill it (its pyramid is built
    after the answer), unless the settler (query/settler.py) filled it once it went quiet; later
    ones cost in proportion to the entries drawn, also while the trace grows (they read its
    latest fill, filled again in the background). With the row counts the answer covers. None
    for an unknown trace."""
    with fill_for_read(reader, trace_id) as read:
        if read is None:
            return None
        entries = reader.window_entries(trace_id, read.fill, window, resolution_ns, read.unwritten)
        entries = _with_span_details(reader, trace_id, read, entries)
    return WindowColumns(entries, span_count=read.fill.span_count, spans_now=read.spans_now)


@dataclass(frozen=True)
class FillRead:
    """What a read of a trace answers from (fill_for_read)."""

    fill: DepthFill
    spans_now: int  # the trace's rows now (more than fill.span_count while it grows)
    unwritten: pa.Table | None  # the fill's rows while they are not written yet (unwritten_rows)


@contextmanager
def fill_for_read(reader: TraceReader, trace_id: str) -> Iterator[FillRead | None]:
    """The fill a read of `trace_id` answers from (read_fill), the trace's row count now and the
    fill's rows if they are not written yet; None for an unknown trace (or one whose rows went).
    The fill is kept from deletion in this process until the read is done, pyramids being built
    wait for the read (ReadsUnderWay), and a fill the read had to make is written and its pyramid
    built once the read is done."""
    try:
        with READS.reading():
            span_count = reader.span_row_count(trace_id)
            fill = read_fill(reader, trace_id, span_count) if span_count else None
            if fill is None:
                yield None
            else:
                with _holding(fill):
                    yield FillRead(fill, span_count, unwritten_rows(trace_id, fill))
    finally:
        start_pyramids()


def read_fill(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill a read of `trace_id`, now of `span_count` rows, answers from: the one of that
    count (_fill_of); or, when there is none but the trace has another (it has grown since),
    at once the latest of those, its pyramid built first (DepthFill.span_count says which),
    starting a refill of the trace in the background when REFILL_POLICY says so (one at a time
    per trace in this process; never while a fill of it made here is not written yet: that one
    is its latest, and its pyramid still to come). A trace with no fill at all is filled now, as
    depth_fill does. None when the trace's rows went since they were counted."""
    fill = _fill_of(reader, trace_id, span_count)
    if fill is not None:
        return fill
    fills = reader.trace_fills(trace_id)
    # One of the same count made over other rows (schema 013) is no earlier state of the trace to tell apart by its count.
    earlier = [row for row in fills if row.span_count != span_count]
    unwritten = [made for made in _unwritten_fills(trace_id) if made.span_count != span_count]
    if not earlier and not unwritten:
        return depth_fill(reader, trace_id, span_count)
    if not unwritten and REFILL_POLICY.due(fills[-1], time.time_ns()):
        start_fill(reader, trace_id)
    best = max(earlier, key=lambda row: (row.pyramid_built, row.fill)) if earlier else None
    if best is not None and (best.pyramid_built or not unwritten):
        return reader.readable_fill(trace_id, best)
    return max(unwritten, key=lambda made: made.fill)


def _fill_of(reader: TraceReader, trace_id: str, span_count: int) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows reads use (reader.span_depth_fill), or one this
    process made and has not written yet."""
    return reader.span_depth_fill(trace_id, span_count) or _unwritten_fill(reader, trace_id, span_count)


def depth_fill(reader: TraceReader, trace_id: str, span_count: int, whole: bool = False) -> DepthFill | None:
    """The fill of `trace_id` at `span_count` rows that reads use, made now when there is none
    (fill_span_depths, one fill at a time in this process): with its pyramid built once the
    caller calls start_pyramids, or with `whole` (the settler), at once; `whole` also makes again a fill
    whose pyramid is missing PYRAMID_WAIT_NS after its spans were written. None when the trace's
    rows went since they were counted."""

    def usable(fill: DepthFill | None) -> bool:
        return fill is not None and (not whole or fill.pyramid_built or time.time_ns() - fill.filled_ns < PYRAMID_WAIT_NS)

    fill = _fill_of(reader, trace_id, span_count)
    if not usable(fill):
        with _DEPTH_FILL:
            fill = _fill_of(reader, trace_id, span_count)
            if not usable(fill):
                filled = fill_span_depths(reader, trace_id, span_count, pyramid_later=not whole)
                if filled is None:
                    return None
                # Another process may have filled it at the same time: all read the same fill.
                fill = reader.span_depth_fill(trace_id, span_count) or filled
    return fill


def _with_span_details(reader: TraceReader, trace_id: str, read: FillRead, entries: Columns) -> Columns:
    """`entries` with the parent and the viewer's attributes (ATTRIBUTE_COLUMN columns) of each
    single span, '' for merged entries, read from the fill for the spans drawn as themselves only."""
    singles = [(span_id, start, end) for span_id, start, end in zip(entries["span_id"], entries["start_ns"], entries["end_ns"])
               if span_id]
    found_rows = reader.span_details(trace_id, read.fill, singles, read.unwritten)
    found = {span_id: (parent, dict(zip(keys, values)))
             for span_id, parent, keys, values in zip(
                 found_rows["span_id"], found_rows["parent_span_id"], found_rows["attr_keys"], found_rows["attr_values"])}
    details = [found.get(span_id, ("", {})) for span_id in entries["span_id"]]
    return {**entries, "parent_span_id": [parent for parent, _ in details],
            **{ATTRIBUTE_COLUMN + key: [attributes.get(key, "") for _, attributes in details] for key in WINDOW_ATTRIBUTES}}
