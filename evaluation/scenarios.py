"""The MLPerf-style scenarios, as loops over an `issue(query)` function that runs one query
(one batch) to completion. Time comes from an injected clock, so the loops are tested with a
fake clock and nothing sleeps.

- single-stream: queries back to back; each query's latency.
- offline: queries back to back; the throughput of the whole run.
- server: queries arrive as a Poisson process at a target rate; a query's latency runs from its
  arrival (so waiting behind earlier queries counts), and its p99 is held against a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SCENARIOS = ("single-stream", "offline", "server")

Issue = Callable[[int], None]


@dataclass(frozen=True)
class Clock:
    now_ns: Callable[[], int]
    sleep_ns: Callable[[int], None]


@dataclass(frozen=True)
class Run:
    latencies_ns: tuple[int, ...]
    wall_ns: int  # first issue to last completion


def poisson_arrivals_ns(qps: float, count: int, seed: int) -> tuple[int, ...]:
    """Arrival offsets of `count` queries at `qps` on average: exponential gaps, seeded."""
    gaps = np.random.default_rng(seed).exponential(1e9 / qps, size=count)
    return tuple(int(offset) for offset in np.cumsum(gaps) - gaps[0])  # the first arrives at 0


def back_to_back(issue: Issue, queries: int, clock: Clock) -> Run:
    """single-stream and offline: the next query starts when the last one ends."""
    latencies = []
    start = clock.now_ns()
    for query in range(queries):
        began = clock.now_ns()
        issue(query)
        latencies.append(clock.now_ns() - began)
    return Run(tuple(latencies), clock.now_ns() - start)


def server(issue: Issue, arrivals_ns: tuple[int, ...], clock: Clock) -> Run:
    """One worker serving queries in arrival order; it idles until the next arrival."""
    latencies = []
    start = clock.now_ns()
    for query, arrival in enumerate(arrivals_ns):
        wait = start + arrival - clock.now_ns()
        if wait > 0:
            clock.sleep_ns(wait)
        issue(query)
        latencies.append(clock.now_ns() - (start + arrival))
    return Run(tuple(latencies), clock.now_ns() - start)
