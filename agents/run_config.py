"""What `mlscope run` passes to the processes it starts, through their environment, and how a
bootstrapped process reads it back (agents/bootstrap.py). Pure: mappings in, values out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlscope.conventions import ENV_ENDPOINT, ENV_LEVEL, ENV_SERVICE, ENV_TRACE_FILE, agent_level, collector_endpoint, service_name

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
    """Where the processes of a run append the count of spans their collector did not take,
    next to the trace id file (MLSCOPE_TRACE_FILE), one line each: `mlscope run` sums them."""
    return f"{trace_file}.undelivered"


def undelivered_spans(trace_file: str) -> int:
    """The spans of a run its processes reported undelivered (see undelivered_report_path)."""
    try:
        with open(undelivered_report_path(trace_file), encoding="utf-8") as report:
            return sum(int(line) for line in report if line.strip().isdigit())
    except OSError:
        return 0
