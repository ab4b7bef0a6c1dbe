"""What `mlscope run` passes to the processes it starts, through their environment, and how a
bootstrapped process reads it back (agents/bootstrap.py). Pure: mappings in, values out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlscope.conventions import (
    ENV_ENDPOINT,
    ENV_LEVEL,
    ENV_SERVICE,
    ENV_TRACE_FILE,
    LEVELS,
    agent_level,
    collector_endpoint,
    service_name,
)

AUTOLOAD_DIR = str(Path(__file__).resolve().parent / "autoload")
"""Put first on PYTHONPATH: its sitecustomize.py starts the bootstrap."""


@dataclass(frozen=True)
class RunConfig:
    """A bootstrapped process's agent settings."""

    level: str
    endpoint: str
    service: str


def run_environment(
    env: Mapping[str, str],
    level: str | None = None,
    endpoint: str | None = None,
    service: str | None = None,
    trace_file: str | None = None,
) -> dict[str, str]:
    """The environment `mlscope run` gives its command: `env` plus the autoload directory first
    on PYTHONPATH and the agent's settings (those not given keep what `env` says)."""
    child = dict(env)
    child["PYTHONPATH"] = os.pathsep.join(filter(None, [AUTOLOAD_DIR, env.get("PYTHONPATH")]))
    for key, value in ((ENV_LEVEL, level), (ENV_ENDPOINT, endpoint), (ENV_SERVICE, service), (ENV_TRACE_FILE, trace_file)):
        if value:
            child[key] = value
    return child


def run_config(env: Mapping[str, str], argv: Sequence[str]) -> RunConfig:
    """The agent's settings in a bootstrapped process (precedence as in mlscope.conventions); the
    service defaults to the program's name."""
    return RunConfig(
        level=agent_level(env),
        endpoint=collector_endpoint(env),
        service=service_name(program_name(argv), env),
    )


_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}


def program_name(argv: Sequence[str]) -> str:
    """What a Python process runs, from its original argv (`sys.orig_argv`): a script's file
    name, a `-m` module's name, `python -c`, or `python` for the REPL/stdin."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, "python")
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
        if arg == "-c" or (arg[:1] == "-" and arg[1:2] != "-" and arg.endswith("c")):  # also -uc, -Bc
            return "python -c"
        if arg in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif arg == "-" or not arg.startswith("-"):
            return Path(arg).name if arg != "-" else "python"
    return "python"


def undelivered_report_path(trace_file: str) -> str:
    """Where the processes of a run append what they did not deliver, next to the trace id file
    (MLSCOPE_TRACE_FILE), one line each (`undelivered_line`): `mlscope run` sums them."""
    return f"{trace_file}.undelivered"


def undelivered_line(counts: Mapping[str, int]) -> str:
    """One process's line in the undelivered report: `level=count` pairs, space-separated."""
    return " ".join(f"{level}={spans}" for level, spans in counts.items() if spans) + "\n"


def undelivered_by_level(trace_file: str) -> dict[str, int]:
    """The spans of a run its processes reported undelivered, per level (see
    undelivered_report_path); an unreadable or missing report counts as none."""
    counts: dict[str, int] = {}
    try:
        with open(undelivered_report_path(trace_file), encoding="utf-8") as report:
            pairs = [pair.partition("=") for line in report for pair in line.split()]
    except OSError:
        return counts
    for level, _, spans in pairs:
        if spans.isdigit():
            counts[level] = counts.get(level, 0) + int(spans)
    return counts


def undelivered_spans(trace_file: str) -> int:
    """All the spans of a run its processes reported undelivered."""
    return sum(undelivered_by_level(trace_file).values())


def undelivered_summary(counts: Mapping[str, int]) -> str:
    """`N spans not delivered (model 2, layer 1200, library 900)`, levels in their order."""
    ordered = sorted(counts.items(), key=lambda item: LEVELS.index(item[0]) if item[0] in LEVELS else len(LEVELS))
    return f"{sum(counts.values())} spans not delivered ({', '.join(f'{level} {spans}' for level, spans in ordered)})"
