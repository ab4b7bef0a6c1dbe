"""Pure cores of the deep levels: enter/exit records -> the tree of nested calls, and
intervals -> the innermost interval containing each one (where an op goes in the call tree). No torch, no OpenTelemetry: the torch capture
(agents/torch_capture.py) records cheaply during the model call and hands its records here after.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

Interval = tuple[int, int]
"""[start_ns, end_ns], both ends inclusive."""


@dataclass(frozen=True)
class WallClockAnchor:
    """One (wall, monotonic) reading pair: maps perf_counter_ns readings onto the wall clock the
    OTel SDK stamps spans with (time.time_ns). Taken once per call, so the hot path reads only the
    monotonic clock and a wall-clock step during a call cannot reorder its events."""

    wall_ns: int
    perf_ns: int

    @classmethod
    def now(cls) -> WallClockAnchor:
        return cls(time.time_ns(), time.perf_counter_ns())

    @property
    def offset_ns(self) -> int:
        """What to add to a perf_counter_ns reading to put it on the wall clock."""
        return self.wall_ns - self.perf_ns

    def wall(self, perf_ns: int) -> int:
        return perf_ns + self.offset_ns


ENTER, RETURN, RAISE = 0, 1, 2
"""Kinds of call records: a call starts, returns, or ends by raising."""

CallEvent = tuple[Hashable, int, int, Any]
"""(key, time_ns, kind, payload)"""


class Call(NamedTuple):
    """One paired enter/exit. `parent` indexes the enclosing call in the same list (-1 for a
    root). `failed` when it ended by raising, or when no exit was recorded (an exception the
    exit record missed unwound through it; `end_ns` is then when that was noticed). The payloads
    are whatever the enter and exit records carried (None without an exit). A NamedTuple, not a
    frozen dataclass: pairing builds one per module call, and a NamedTuple is cheaper to build
    (docs/PERFORMANCE.md)."""

    key: Hashable
    start_ns: int
    end_ns: int
    parent: int
    failed: bool = False
    enter_payload: Any = None
    exit_payload: Any = None


def pair_calls(events: Sequence[CallEvent], end_ns: int) -> list[Call]:
    """Pairs enter/exit records, in the order they happened, into nested calls in enter order.
    An exit closes the innermost open call with its key; calls opened above it without an exit
    of their own are closed there as failed, and calls still open at `end_ns` are closed at
    `end_ns` as failed."""
    keys: list[Hashable] = []
    starts: list[int] = []
    ends: list[int] = []
    parents: list[int] = []
    failed: list[bool] = []
    enter_payloads: list[Any] = []
    exit_payloads: list[Any] = []
    stack: list[int] = []
    for key, at, kind, payload in events:
        if kind == ENTER:
            keys.append(key)
            starts.append(at)
            ends.append(end_ns)
            parents.append(stack[-1] if stack else -1)
            failed.append(True)
            enter_payloads.append(payload)
            exit_payloads.append(None)
            stack.append(len(keys) - 1)
            continue
        depth = len(stack) - 1
        if depth < 0 or keys[stack[depth]] != key:  # not the usual case: the innermost call exits
            depth = next((d for d in range(depth - 1, -1, -1) if keys[stack[d]] == key), -1)
            if depth < 0:
                continue  # an exit whose enter was not recorded: nothing to close
        for unwound in stack[depth + 1 :]:
            ends[unwound] = at
        closed = stack[depth]
        ends[closed] = at
        failed[closed] = kind == RAISE
        exit_payloads[closed] = payload
        del stack[depth:]
    return list(map(Call, keys, starts, ends, parents, failed, enter_payloads, exit_payloads))


def innermost_containers(intervals: Sequence[Interval]) -> list[int]:
    """For each interval, the index of the innermost other interval that contains it, or -1.

    One sweep in start order with a stack of open intervals: O(n log n). Among identical
    intervals the one earlier in `intervals` is the outer one, so callers list the intervals that
    should win ties (layers before the ops they call) first. Partly overlapping intervals (clock
    skew) never contain each other; the interval then goes to the innermost one that does
    contain it."""
    return _sweep(intervals)[0]


def _sweep(intervals: Sequence[Interval]) -> tuple[list[int], list[int]]:
    """innermost_containers' parents, and the sweep order: every interval after its container."""
    # Start order, the longer first among equal starts, input order among equal intervals.
    sort_keys = [(start, -end) for start, end in intervals]
    order = sorted(range(len(intervals)), key=sort_keys.__getitem__)
    ends = [end for _, end in intervals]
    parents = [-1] * len(intervals)
    open_stack: list[int] = []
    for index in order:
        end = ends[index]
        while open_stack and ends[open_stack[-1]] < end:
            open_stack.pop()
        if open_stack:
            parents[index] = open_stack[-1]
        open_stack.append(index)
    return parents, order


@dataclass(frozen=True)
class OpPlacement:
    """Where each op goes: under a layer (`layer_parent[i] >= 0`), under another op
    (`op_parent[i] >= 0`), or, when both are -1, directly under the model span."""

    layer_parent: tuple[int, ...]
    op_parent: tuple[int, ...]
    inside_layer: tuple[bool, ...]

    @property
    def fraction_inside(self) -> float:
        """Share of ops lying inside some layer span (1.0 when there are no ops)."""
        return sum(self.inside_layer) / len(self.inside_layer) if self.inside_layer else 1.0


def place_ops(layers: Sequence[Interval], ops: Sequence[Interval]) -> OpPlacement:
    """Places each op under the innermost layer or op interval containing it (a layer wins a tie
    with an op, an op called by another op nests under it). Layers keep the parents their call
    tree gave them; only ops are placed here."""
    parents, order = _sweep([*layers, *ops])
    first_op = len(layers)
    layer_parent = [-1] * len(ops)
    op_parent = [-1] * len(ops)
    inside = [False] * len(ops)
    for index in order:  # containers first, so an op's parent op already knows if it is inside
        op = index - first_op
        if op < 0:
            continue
        parent = parents[index]
        if parent >= first_op:
            op_parent[op] = parent - first_op
            inside[op] = inside[parent - first_op]
        elif parent >= 0:
            layer_parent[op] = parent
            inside[op] = True
    return OpPlacement(tuple(layer_parent), tuple(op_parent), tuple(inside))
