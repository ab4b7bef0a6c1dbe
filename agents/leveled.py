"""`mlscope run --leveled`: XSP's leveled experimentation. Tracing a level slows down the levels
above it (a layer span's hooks run inside its model span), so a single run at library level
reports inflated model latencies. Leveled runs run the same command once per pass, at model,
layer, library and hardware level, all in one trace under a `mlscope.leveled` root span:

- each level's figures are read from the pass where it is the deepest level (model latency from
  the model pass, layer spans from the layer pass, ...), where no deeper tracing inflates them;
- each pass's model-span median, against the model pass's, is that pass's overhead.

Each pass's bootstrapped processes tally the spans their agent exports (`SpanTally`, a decorator
of the agent's exporter: it sees the deep spans the deferred worker encodes too, so a pass
measures the agent users get, and it reports that agent's writer) and append one JSON line each
to the file named by MLSCOPE_LEVELED_REPORT at exit (`append_report`); the parent
merges them per pass (`read_report`) and records the figures as attributes of the root span
(`root_attributes`), so they are stored with the trace and queryable in SQL. The parent never
opens the store: the root span goes to the collector like every other span.
"""

from __future__ import annotations

import json
import statistics
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Status, StatusCode

from mlscope.conventions import (
    DEFAULT_LEVEL,
    ENV_LEVELED_REPORT,
    LEVEL,
    LEVELED_PASSES,
    LEVELED_RUN_ID,
    LEVELED_SPAN,
    LEVELS,
    PHASE,
    collector_endpoint,
    leveled_figure,
    service_name,
)

from .api import start_agent
from .otlp_exporter import EncodedSpanExporter, ExporterDecorator
from .propagation import extract_env, inject_env
from .run_config import run_environment

PASS_LEVELS: tuple[str, ...] = LEVELS[1:]
"""model, layer, library, hardware: application is traced in every pass."""

MODEL_CALL_PHASES = frozenset({"forward", ""})
"""The phases of a model call's span: `forward` under `mlscope run`, none for `trace_model`'s
`predict` and `run`; the other phases are a training step's other parts."""


# --- pure: summaries and figures ----------------------------------------------------------------


@dataclass(frozen=True)
class LevelTotal:
    """The spans of one level a pass produced: how many, and their durations summed (nested
    spans of one level, such as torch submodules, each count)."""

    spans: int
    total_ns: int


@dataclass(frozen=True)
class PassSummary:
    """What the processes of one pass traced: every model span's duration, and per level the
    count and total duration of its spans."""

    level: str
    model_durations_ns: tuple[int, ...]
    levels: Mapping[str, LevelTotal]
    writer: str = ""
    """The deep-span writer of the processes' agents (conventions.AGENT_WRITERS; several,
    comma-separated, if they differed); empty when unknown."""

    @property
    def model_p50_ns(self) -> int | None:
        return round(statistics.median(self.model_durations_ns)) if self.model_durations_ns else None

    def to_json(self) -> str:
        return json.dumps({
            "level": self.level,
            "model_durations_ns": list(self.model_durations_ns),
            "levels": {level: [total.spans, total.total_ns] for level, total in self.levels.items()},
            "writer": self.writer,
        })

    @classmethod
    def from_json(cls, text: str) -> PassSummary:
        data = json.loads(text)
        return cls(data["level"], tuple(int(ns) for ns in data["model_durations_ns"]),
                   {level: LevelTotal(int(spans), int(total)) for level, (spans, total) in data["levels"].items()},
                   data.get("writer", ""))


def merge(level: str, summaries: Sequence[PassSummary]) -> PassSummary:
    """One pass's summary from those of its processes (a program may start Python subprocesses)."""
    levels: dict[str, LevelTotal] = {}
    for summary in summaries:
        for name, total in summary.levels.items():
            seen = levels.get(name, LevelTotal(0, 0))
            levels[name] = LevelTotal(seen.spans + total.spans, seen.total_ns + total.total_ns)
    durations = tuple(ns for summary in summaries for ns in summary.model_durations_ns)
    writers = sorted({summary.writer for summary in summaries if summary.writer})
    return PassSummary(level, durations, levels, ",".join(writers))


def overhead(p50_ns: int | None, baseline_p50_ns: int | None) -> float | None:
    """How much slower a pass's median model span is than the model pass's, as a fraction
    (0.25 = 25 % slower); None when either pass has no model span."""
    if p50_ns is None or not baseline_p50_ns:
        return None
    return p50_ns / baseline_p50_ns - 1


@dataclass(frozen=True)
class PassFigures:
    """One row of the leveled table."""

    level: str
    model_spans: int
    model_p50_ns: int | None
    overhead: float | None
    writer: str = ""


def pass_figures(summaries: Mapping[str, PassSummary]) -> list[PassFigures]:
    """The figures of each pass that ran, in level order; overheads against the model pass."""
    baseline = summaries["model"].model_p50_ns if "model" in summaries else None
    return [PassFigures(level, len(summary.model_durations_ns), summary.model_p50_ns,
                        overhead(summary.model_p50_ns, baseline), summary.writer)
            for level, summary in sorted(summaries.items(), key=lambda item: LEVELS.index(item[0]))]


def root_attributes(summaries: Mapping[str, PassSummary]) -> dict[str, int | float | str]:
    """The root span's figures (docs/conventions.md): per pass its model spans, their median and
    its overhead and the writer it measured; per level, its own spans from the pass where it is the
    deepest level."""
    attributes: dict[str, int | float | str] = {
        LEVELED_PASSES: ",".join(level for level in PASS_LEVELS if level in summaries)
    }
    for figures in pass_figures(summaries):
        level = figures.level
        attributes[leveled_figure(level, "model_spans")] = figures.model_spans
        if figures.model_p50_ns is not None:
            attributes[leveled_figure(level, "model_p50_ns")] = figures.model_p50_ns
        if figures.overhead is not None:
            attributes[leveled_figure(level, "overhead")] = figures.overhead
        if figures.writer:
            attributes[leveled_figure(level, "writer")] = figures.writer
        own = summaries[level].levels.get(level)
        if own is not None:
            attributes[leveled_figure(level, "level_spans")] = own.spans
            attributes[leveled_figure(level, "level_total_ns")] = own.total_ns
    return attributes


def render_table(figures: Sequence[PassFigures]) -> str:
    header = ("pass", "model spans", "model p50 (ms)", "overhead", "writer")
    rows = [(f.level, str(f.model_spans),
             "-" if f.model_p50_ns is None else f"{f.model_p50_ns / 1e6:.3f}",
             "-" if f.overhead is None else f"{f.overhead * 100:+.1f}%", f.writer or "-") for f in figures]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in [header, *rows]]
    return "\n".join(lines) + "\n"


# --- in each pass's processes ------------------------------------------------------------------


class SpanTally(ExporterDecorator):
    """Decorates an agent's exporter (`start_agent(wrap_exporter=SpanTally)`): counts the spans of
    one process by level as they are exported, whichever writer wrote them, and keeps model spans'
    durations. Encoded requests are decoded here, on the exporting thread, not the model's.

    Only model calls give durations: a training program's `loss`, `backward`, `optimizer` and
    `data` spans are model-level too (conventions: Training), but mixed into the model median they
    would make it a median of unlike things, and a pass's overhead meaningless."""

    def __init__(self, exporter: EncodedSpanExporter) -> None:
        super().__init__(exporter)
        self._lock = threading.Lock()  # the batch processor's thread and the deferred worker export
        self._model_durations_ns: list[int] = []
        self._levels: dict[str, LevelTotal] = {}

    def exported(self, spans: Sequence[ReadableSpan], result: SpanExportResult) -> None:
        self._count((str((span.attributes or {}).get(LEVEL, DEFAULT_LEVEL)),
                     str((span.attributes or {}).get(PHASE, "")),
                     (span.end_time or 0) - (span.start_time or 0)) for span in spans)

    def exported_encoded(self, body: bytes, spans: int, result: SpanExportResult) -> None:
        self._count((*_level_and_phase(span.attributes), span.end_time_unix_nano - span.start_time_unix_nano)
                    for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans)

    def _count(self, spans: Iterable[tuple[str, str, int]]) -> None:
        """Counts (level, phase, duration) triples; phase is "" for a span without one."""
        with self._lock:
            for level, phase, duration_ns in spans:
                seen = self._levels.get(level, LevelTotal(0, 0))
                self._levels[level] = LevelTotal(seen.spans + 1, seen.total_ns + duration_ns)
                if level == "model" and phase in MODEL_CALL_PHASES:
                    self._model_durations_ns.append(duration_ns)

    def summary(self, level: str, writer: str = "") -> PassSummary:
        with self._lock:
            return PassSummary(level, tuple(self._model_durations_ns), dict(self._levels), writer)


def _level_and_phase(attributes: Iterable[Any]) -> tuple[str, str]:
    """The `mlscope.level` and `mlscope.phase` ("" when absent) of an encoded span's attributes
    (KeyValue messages)."""
    level, phase = DEFAULT_LEVEL, ""
    for pair in attributes:
        if pair.key == LEVEL:
            level = str(pair.value.string_value)
        elif pair.key == PHASE:
            phase = str(pair.value.string_value)
    return level, phase


def append_report(path: str, summary: PassSummary) -> None:
    """Appends `summary` as one line: every process of a pass appends to the same file, and one
    short O_APPEND write does not interleave with another's."""
    with open(path, "a", encoding="utf-8") as report:
        report.write(summary.to_json() + "\n")


def read_report(path: Path, level: str) -> PassSummary | None:
    """The merged summary of a pass's processes; None when none of them reported (the command
    ran no bootstrapped Python process)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    summaries = [PassSummary.from_json(line) for line in lines if line.strip()]
    return merge(level, summaries) if summaries else None


# --- the parent: `mlscope run --leveled` ---------------------------------------------------------


@dataclass(frozen=True)
class LeveledRun:
    """What a leveled run did: its exit code (the first failing pass's), trace and figures."""

    exit_code: int
    run_id: str
    trace_id: str
    summaries: Mapping[str, PassSummary]


def run_leveled(
    command: Sequence[str],
    env: Mapping[str, str],
    endpoint: str | None,
    service: str | None,
    run_pass: Callable[[Sequence[str], dict[str, str]], int],
    scratch: Path,
    say: Callable[[str], None],
) -> LeveledRun:
    """Runs `command` once per level of PASS_LEVELS, each with `run_pass(command, its
    environment)` returning its exit code, and stops at the first that fails; all in one trace
    whose root span, with the passes' figures, goes to the collector. `env`, `endpoint` and
    `service` are what `mlscope run` gives `bootstrap.run_environment`; reports go to `scratch`."""
    run_id = uuid.uuid4().hex
    agent = start_agent(service=service or service_name("mlscope", env),
                        endpoint=endpoint or collector_endpoint(env), level="application")
    root = agent.start_span(LEVELED_SPAN, "application", {LEVELED_RUN_ID: run_id}, context=extract_env(env))
    root_context = trace.set_span_in_context(root)
    summaries: dict[str, PassSummary] = {}
    exit_code = 0
    try:
        for level in PASS_LEVELS:
            report = scratch / f"{level}.jsonl"
            pass_env = run_environment(env, level, endpoint, service)
            pass_env[ENV_LEVELED_REPORT] = str(report)
            inject_env(pass_env, root_context)
            say(f"pass {level}")
            exit_code = run_pass(command, pass_env)
            if exit_code:
                root.set_status(Status(StatusCode.ERROR, f"pass {level} exited with code {exit_code}"))
                break
            summary = read_report(report, level)
            if summary is None:
                say(f"pass {level}: no traced Python process reported (is the command a Python program?)")
            else:
                summaries[level] = summary
        root.set_attributes(root_attributes(summaries))
    finally:
        root.end()
        agent.shutdown()
    return LeveledRun(exit_code, run_id, format(root.get_span_context().trace_id, "032x"), summaries)
