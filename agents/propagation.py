"""W3C trace context across process boundaries, so the spans of several processes form one trace.

- Subprocesses: the context travels in the environment as `TRACEPARENT` / `TRACESTATE` (the
  names the OpenTelemetry environment-carrier proposal and most CLIs use). `inject_env` writes
  them for a child; `extract_env` reads them, and `mlscope run`'s bootstrap makes its process
  span a child of what it finds there.
- HTTP: `inject_headers` / `extract_headers` go through the globally configured propagator
  (`opentelemetry.propagate`, W3C trace context + baggage unless the user set another), as every
  OTel HTTP instrumentation does, so mlscope processes interoperate with them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENV_KEYS = ("TRACEPARENT", "TRACESTATE")
_W3C = TraceContextTextMapPropagator()


class _EnvSetter(Setter[MutableMapping[str, str]]):
    """Environment variables are upper case by convention; W3C header names are lower case."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key.upper()] = value


class _EnvGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.upper())
        return [value] if value else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return [key.lower() for key in carrier if key in ENV_KEYS]


def inject_env(env: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Sets TRACEPARENT (and TRACESTATE) in `env` to `context`'s span (default: the current
    span) and returns `env`; pass the result as a subprocess's environment. Stale values from an
    outer trace are removed first, so a child never joins the wrong parent."""
    for key in ENV_KEYS:
        env.pop(key, None)
    _W3C.inject(env, context, setter=_EnvSetter())
    return env


def extract_env(env: Mapping[str, str]) -> Context:
    """The remote parent named by TRACEPARENT/TRACESTATE in `env`; an empty context (so a new
    root) when they are absent or malformed."""
    return _W3C.extract(env, getter=_EnvGetter())


def inject_headers(headers: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Adds `context`'s (default: the current) trace context to outgoing HTTP headers."""
    propagate.inject(headers, context)
    return headers


def extract_headers(headers: Mapping[str, str]) -> Context:
    """The remote parent named by incoming HTTP headers (any letter case)."""
    return propagate.extract({key.lower(): value for key, value in headers.items()})
