"""The log-line budget (mlscope.listener): pure counting with a given clock."""

from __future__ import annotations

import logging

from mlscope.listener import LineBudget, RateLimitFilter

HERE = ("server.py", 10)
THERE = ("server.py", 20)


def test_a_budget_passes_n_lines_per_interval_then_reports_the_dropped_ones() -> None:
    budget = LineBudget(lines_per_interval=3, interval_s=60)
    assert [budget.admit(HERE, now=t) for t in (0, 1, 2, 3, 4)] == [0, 0, 0, None, None]
    assert budget.admit(THERE, now=5) == 0  # another origin has its own budget
    assert budget.admit(HERE, now=59.9) is None
    assert budget.admit(HERE, now=60) == 3  # the next interval's first line counts the drops
    assert [budget.admit(HERE, now=t) for t in (61, 62, 63)] == [0, 0, None]
    assert budget.admit(HERE, now=500) == 1


def _record(line: int, message: str = "failed %s", args: tuple = ("x",)) -> logging.LogRecord:
    return logging.LogRecord("mlscope.test", logging.ERROR, "server.py", line, message, args, None)


def test_the_filter_drops_past_the_budget_and_says_how_many_it_dropped() -> None:
    now = [0.0]
    log_filter = RateLimitFilter(lines_per_interval=2, interval_s=10, clock=lambda: now[0])
    assert [log_filter.filter(_record(10)) for _ in range(5)] == [True, True, False, False, False]
    assert log_filter.filter(_record(11))
    now[0] = 10
    record = _record(10)
    assert log_filter.filter(record)
    assert record.getMessage() == "failed x [suppressed 3 lines from here in the last 10 s]"
