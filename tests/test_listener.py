"""The log-line budget (mlscope.listener): pure counting with a given clock; and the listener's
limits as `serve`/`collector`/`query` flags and environment variables (parsing only)."""

from __future__ import annotations

import logging

import pytest

from mlscope.cli.common import UsageError
from mlscope.cli.main import _listener_limits, build_parser
from mlscope.conventions import ENV_BODY_TIMEOUT, ENV_HEADER_TIMEOUT, ENV_LOG_LINES_PER_MINUTE, ENV_MAX_CONNECTIONS
from mlscope.listener import LineBudget, ListenerLimits, RateLimitFilter, rate_limit_logs

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


# --- the limits as flags and environment variables of serve, collector and query ----------------


@pytest.mark.parametrize("command", ["serve", "collector", "query"])
def test_the_limits_come_from_flags_then_the_environment_then_the_defaults(command: str) -> None:
    parser = build_parser()
    flags = parser.parse_args([command, "--header-timeout", "2.5", "--max-connections", "300"])
    environment = {ENV_HEADER_TIMEOUT: "7", ENV_BODY_TIMEOUT: "4", ENV_LOG_LINES_PER_MINUTE: "5"}
    assert _listener_limits(flags, environment) == ListenerLimits(
        header_timeout_s=2.5, body_timeout_s=4.0, max_connections=300, log_lines_per_minute=5)
    assert _listener_limits(parser.parse_args([command]), {}) == ListenerLimits()


@pytest.mark.parametrize("flag", ["--header-timeout", "--body-timeout", "--max-connections", "--log-lines-per-minute"])
@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_a_limit_that_is_not_positive_is_refused(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2 and "expected a positive" in capsys.readouterr().err
    variable = {"--header-timeout": ENV_HEADER_TIMEOUT, "--body-timeout": ENV_BODY_TIMEOUT,
                "--max-connections": ENV_MAX_CONNECTIONS, "--log-lines-per-minute": ENV_LOG_LINES_PER_MINUTE}[flag]
    with pytest.raises(UsageError, match=f"^{variable}: expected a positive"):
        _listener_limits(build_parser().parse_args(["serve"]), {variable: value})


def test_rate_limited_logs_take_the_configured_budget() -> None:
    handler = logging.Handler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        rate_limit_logs(lines_per_minute=3)
        (installed,) = [kind for kind in handler.filters if isinstance(kind, RateLimitFilter)]
        assert [installed.filter(_record(30)) for _ in range(4)] == [True, True, True, False]
    finally:
        root.removeHandler(handler)
