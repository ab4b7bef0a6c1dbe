"""A trace's rows made the window cache's rows, on whole columns (no Python object per span):
each span's depth as span_tree makes it (tree_spans), its span_depths row (span_depth_rows), and
the widths of the pyramid built over them (pyramid_widths). Pure: query/windows.py reads the rows
and stores what these make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .reader import TRACE_ORDER_COLUMNS, DepthFill, copy_rows
from .timeline import span_tree

# The pyramid's finest buckets: those in which a trace's spans start in at most 1/16 as many
# buckets as it has spans. Finer ones would merge too little to read faster than the spans.
PYRAMID_SPANS_PER_BUCKET = 16


def pyramid_widths(starts: Sequence[int] | np.ndarray, spans_per_bucket: int = PYRAMID_SPANS_PER_BUCKET) -> tuple[int, int]:
    """(first, last) bucket width, as log2 ns, of the pyramid of a trace whose spans start at
    `starts` (ascending): from the finest width at which the starts fall in at most
    len(starts) / spans_per_bucket buckets (at least one), to the width at which they share one."""
    # Sorted starts fall in 1 + (the neighbours whose highest differing bit is at or above k)
    # buckets of width 2^k: one pass gives the count at every width.
    starts = np.asarray(starts, dtype=np.uint64)
    highest_bits = np.bincount(bit_lengths(starts[1:] ^ starts[:-1]).astype(np.int64), minlength=66)
    last = int(np.flatnonzero(highest_bits)[-1]) if highest_bits.any() else 0
    most_buckets = max(1, len(starts) // max(1, spans_per_bucket))
    buckets = 1
    for width in range(last, -1, -1):
        buckets += int(highest_bits[width + 1])
        if buckets > most_buckets:
            return width + 1, last
    return 0, last


def bit_lengths(values: np.ndarray) -> np.ndarray:
    """int.bit_length of each uint64 (exact: a float's exponent, less one where the conversion
    rounded up to the next power of two)."""
    values = np.asarray(values, dtype=np.uint64)
    exponents = np.minimum(np.frexp(values.astype(np.float64))[1], 64).astype(np.int64)  # 2**64 - 1 rounds to 2**64
    below = np.left_shift(np.uint64(1), np.maximum(exponents - 1, 0).astype(np.uint64)) > values
    return (exponents - ((exponents > 0) & below)).astype(np.uint64)


# The value of each byte of a lowercase hex digit; HEX_INVALID for every other byte.
HEX_INVALID = 255
_HEX_DIGITS = np.full(256, HEX_INVALID, np.uint8)
_HEX_DIGITS[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def hex_ids(ids: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(value, present) of string ids that are each '' or 16 lowercase hex digits, as the
    collector writes the 8 bytes of OTLP span ids: the id as an integer (0 for '') and whether
    it is there. Two ids are equal exactly when their integers are (and both are there), and
    order alike. None when any id has another form (the store may hold others): whole-buffer
    work, no Python object per id."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if ids.type != pa.string():
        return None
    # A string array's buffers: validity, int32 offsets, bytes.
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + len(ids) + 1]
    lengths = np.diff(offsets)
    present = lengths != 0
    if ids.null_count or not np.all(lengths[present] == 16):
        return None
    data = ids.buffers()[2]  # None when every id is ''
    digits = _HEX_DIGITS[np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)]
    if np.any(digits == HEX_INVALID):
        return None
    digits = digits.reshape(-1, 16)
    big_endian = np.ascontiguousarray(digits[:, 0::2] << 4 | digits[:, 1::2]).view(">u8").ravel()
    values = np.zeros(len(ids), np.uint64)
    values[present] = big_endian
    return values, present


@dataclass(frozen=True)
class TreedSpans:
    """A trace's rows (the reader's window_spans) with what span_tree makes of them."""

    spans: pa.Table  # the rows, in the order of the arrays below
    kept: np.ndarray  # bool by row: the copy of its span id span_tree keeps (the first in _READER_ORDER)
    depth: np.ndarray  # uint64 by row: its depth in span_tree's tree
    copies: np.ndarray  # the rows repeating another's span id and content (copy_rows: FINAL would merge them)


# The order in which span_tree is given a trace's rows (as the reader's reads have them): it keeps
# the first copy of a span id and breaks a loop of parents at the first span it meets of it.
_READER_ORDER = [(name, "ascending") for name in TRACE_ORDER_COLUMNS]


def tree_spans(spans: pa.Table) -> TreedSpans:
    """The depths of a trace's rows (span_id, parent_span_id, start_ns, end_ns, content_hash, in
    any order) as span_tree makes them of the rows in _READER_ORDER: each span id's kept row is
    its first there, a row's parent the kept row of its parent id (none when that is '' or not in
    the trace). Whole-column work: the ids matched (as integers by a sort when they are the
    collector's hex ids, hex_ids, else by Arrow's hash of the strings of the rows in order), then
    the parents followed by doubling, log2(depth) steps. Parents that loop are left to span_tree
    itself (it breaks a loop at a chosen span), one Python step per span."""
    matched = _matched_hex_ids(spans)
    if matched is None:
        spans = spans.sort_by(_READER_ORDER)
        matched = _matched_in_order(spans)
    kept, up, copies = matched
    depth = _depths(up)
    if depth is None:
        spans = spans.sort_by(_READER_ORDER)
        copies = np.array(copy_rows(spans["span_id"], spans["content_hash"].to_numpy()), dtype=np.int64)
        kept = np.zeros(spans.num_rows, dtype=bool)
        depth = np.zeros(spans.num_rows, dtype=np.uint64)
        tree = span_tree(*(spans[name].to_pylist() for name in ("span_id", "parent_span_id", "start_ns", "end_ns")))
        kept[tree.order] = True
        depth[tree.order] = tree.depths
    return TreedSpans(spans, kept, depth, copies)


def _matched_in_order(spans: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, up, copies) of rows in _READER_ORDER: each id's first row; the row of each row's
    parent (-1 for none); the rows repeating the one before (copy_rows)."""
    span_ids, parent_ids = spans["span_id"].combine_chunks(), spans["parent_span_id"].combine_chunks()
    kept = pc.index_in(span_ids, value_set=span_ids).to_numpy() == np.arange(len(span_ids))
    up = pc.index_in(parent_ids, value_set=span_ids).fill_null(-1).to_numpy().astype(np.int64)
    up[pc.equal(parent_ids, "").to_numpy(zero_copy_only=False)] = -1
    copies = np.array(copy_rows(span_ids, spans["content_hash"].to_numpy()), dtype=np.int64)
    return kept, up, copies


def _matched_hex_ids(spans: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """_matched_in_order's (kept, up, copies) of rows in any order whose ids are hex_ids, found by
    sorting the ids as integers; None for other ids. Only the rows of ids with copies (rare) are
    put in _READER_ORDER among themselves, to pick the kept one and tell the copies."""
    found, parents = hex_ids(spans["span_id"]), hex_ids(spans["parent_span_id"])
    if found is None or parents is None or not found[1].all():
        return None
    ids, (parent_values, has_parent) = found[0], parents
    rows = len(ids)
    by_id = np.argsort(ids)  # any order among an id's rows: those of ids with copies are ordered below
    sorted_ids = ids[by_id]
    repeats = sorted_ids[1:] == sorted_ids[:-1]
    kept = np.ones(rows, dtype=bool)
    copies = np.zeros(0, dtype=np.int64)
    if repeats.any():
        in_repeat = np.zeros(rows, dtype=bool)
        in_repeat[1:] |= repeats
        in_repeat[:-1] |= repeats
        repeated = by_id[in_repeat]
        hashes = spans["content_hash"].to_numpy()
        # By id, then as in _READER_ORDER (start, end, content hash: the id is the same).
        ordered = repeated[np.lexsort(tuple(column[repeated] for column in (
            hashes, spans["end_ns"].to_numpy(), spans["start_ns"].to_numpy(), ids)))]
        same_id = ids[ordered[1:]] == ids[ordered[:-1]]
        kept[ordered[1:][same_id]] = False
        # content_hash covers start and end: rows alike in id and hash are next to each other in both orders.
        copies = ordered[1:][same_id & (hashes[ordered[1:]] == hashes[ordered[:-1]])]
    # The kept rows by id, each id once: where a parent id is found.
    kept_by_id = by_id[kept[by_id]]
    kept_ids = ids[kept_by_id]
    at = np.minimum(np.searchsorted(kept_ids, parent_values), len(kept_ids) - 1)
    up = np.where(has_parent & (kept_ids[at] == parent_values), kept_by_id[at], -1).astype(np.int64)
    return kept, up, copies


def _depths(up: np.ndarray) -> np.ndarray | None:
    """The depth of each row whose parent row is `up` (-1: none), by doubling; None when parents loop."""
    up = up.copy()
    depth = (up >= 0).astype(np.uint64)  # the hops from each row to `up`, its farthest ancestor known so far
    for _ in range(len(up).bit_length() + 2):  # a chain of len(up) rows is walked in bit_length + 1 doublings
        below = np.flatnonzero(up >= 0)
        if not len(below):
            return depth
        ancestors = up[below]
        depth[below] += depth[ancestors]
        up[below] = up[ancestors]
    return None  # still not at a root after more hops than rows: a loop


def span_depth_rows(trace_id: str, fill: DepthFill, treed: TreedSpans) -> pa.Table:
    """span_depths rows of `fill` from a trace's treed rows: each span once (the copy span_tree
    keeps), with its depth and duration class."""
    # Mostly every row is kept: a filter would copy every column for nothing.
    spans = treed.spans if treed.kept.all() else treed.spans.filter(pa.array(treed.kept))
    starts, ends = spans["start_ns"].to_numpy(), spans["end_ns"].to_numpy()
    size = spans.num_rows
    return pa.table({
        "trace_id": pa.repeat(trace_id, size),  # a list of `size` strings costs 20 times as much
        "span_count": np.full(size, fill.span_count, np.uint64),
        "fill": np.full(size, fill.fill, np.uint64),
        **{name: spans[name] for name in ("span_id", "parent_span_id", "attr_keys", "attr_values", "service", "name", "level")},
        "depth": treed.depth if treed.kept.all() else treed.depth[treed.kept],
        "duration_bits": bit_lengths(np.where(ends > starts, ends - starts, 0)),
        "start_ns": starts,
        "end_ns": ends,
    })
