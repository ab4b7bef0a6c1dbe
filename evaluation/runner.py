"""Runs an evaluation plan: manifests x levels x frameworks x batch sizes x scenarios, each
configuration traced and its results sent as an `mlscope.evaluation` span. Nothing here opens the store: what
reaches the collector is durable there, and the `evaluations` table is derived from the spans.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from mlscope.agents import Agent, default_endpoint, start_agent
from mlscope.conventions import (
    BATCH_SIZE,
    EVALUATE_SPAN,
    EVALUATION_PREFIX,
    EVALUATION_QUERIES,
    EVALUATION_SAMPLES,
    FRAMEWORK_NAME,
    HOST_NAME,
    MODEL_NAME,
    otlp_headers,
)
from mlscope.agents.otlp_exporter import EncodedSpanExporter, ExporterDecorator
from mlscope.agents.span_loss import dropped_attributes
from mlscope.manifests import AssetCache, Manifest, check_framework, preprocessed_dataset
from mlscope.manifests.datasets import load_dataset

from . import scenarios
from .predictors import PREDICTORS, Predictor, check_runs_in, create_predictor
from .results import SPAN_NAME, EvaluationResult
from .stats import Divergence, divergence, summarize, top_k_accuracy
from .system import System, this_system

DIVERGENCE_SAMPLES = 32
QUERY_POOL = 4  # distinct preprocessed batches the timed queries cycle through
SERVER_LOAD = 0.5  # default server rate: this fraction of what one worker can serve
SERVER_BOUND_FACTOR = 4  # default p99 bound: this many median service times


@dataclass(frozen=True)
class Plan:
    manifests: tuple[Manifest, ...]
    frameworks: tuple[str, ...]  # the first is the reference for divergence
    batch_sizes: tuple[int, ...]
    scenarios: tuple[str, ...] = ("single-stream",)
    levels: tuple[str, ...] = ("model",)  # how deep each configuration is traced: a sweep dimension
    repetitions: int = 20  # timed queries per configuration and scenario
    warmup: int = 2
    accuracy: bool = False
    execution_provider: str = "cpu"
    server_qps: float | None = None
    server_bound_ms: float | None = None
    seed: int = 0


def check_plan(plan: Plan) -> None:
    """Everything that can be found wrong before anything runs or is sent (ManifestError,
    PredictorError), so a bad input leaves no trace behind."""
    check_plan_frameworks(plan)
    for manifest in plan.manifests:
        check_framework(manifest)
    for framework in plan.frameworks:
        PREDICTORS[framework].resolve_provider(plan.execution_provider)


def check_plan_frameworks(plan: Plan) -> None:
    """What does not depend on the machine: each manifest's model runs in each of the plan's
    frameworks. The installed framework versions and the providers are checked where it runs."""
    for manifest in plan.manifests:
        for framework in plan.frameworks:
            check_runs_in(manifest, framework)


class DeliveryFailed(Exception):
    """The collector did not accept every span: results may be missing from the store."""


class _CountingExporter(ExporterDecorator):
    """Counts the spans whose export failed (after the exporter's own retries), whichever writer
    wrote them: the SDK's batch processor and the deferred worker only log such failures, and
    lost results must fail the command."""

    def __init__(self, exporter: EncodedSpanExporter) -> None:
        super().__init__(exporter)
        self._lock = threading.Lock()  # the batch processor's thread and the deferred worker export
        self.lost = 0

    def exported(self, spans: Sequence[ReadableSpan], result: SpanExportResult) -> None:
        self._count(len(spans), result)

    def exported_encoded(self, body: bytes, spans: int, result: SpanExportResult) -> None:
        self._count(spans, result)

    def _count(self, spans: int, result: SpanExportResult) -> None:
        if result is not SpanExportResult.SUCCESS:
            with self._lock:
                self.lost += spans


class EvaluationAgent:
    """One Agent per traced level, all exporting to the collector at `endpoint`; `close` fails
    when any span was lost. A level's agent starts on first use (at hardware level with its
    hardware sampler)."""

    def __init__(self, endpoint: str | None, system: System, service: str = "mlscope-evaluate",
                 resource: dict[str, str] | None = None) -> None:
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self._resource = {HOST_NAME: system.name, **(resource or {})}
        self._service = service
        self._exporters: list[_CountingExporter] = []
        self._agents: dict[str, Agent] = {}

    def check_collector(self, timeout_s: float = 10) -> None:
        """DeliveryFailed unless the collector accepts an (empty) OTLP export now: better to say
        so before a long run than to find every result lost after it."""
        # The exporters' headers (OTEL_EXPORTER_OTLP_HEADERS): a collector with --auth wants the token.
        request = urllib.request.Request(f"{self.endpoint}/v1/traces", data=b"",
                                         headers={**otlp_headers(), "Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(f"cannot send to the collector at {self.endpoint}: {getattr(exc, 'reason', exc)}") from exc

    def agent_at(self, level: str) -> Agent:
        if level not in self._agents:
            self._agents[level] = start_agent(self._service, self.endpoint, level, self._resource, self._count)
        return self._agents[level]

    def _count(self, exporter: EncodedSpanExporter) -> EncodedSpanExporter:
        counting = _CountingExporter(exporter)
        self._exporters.append(counting)
        return counting

    def close(self, check_delivery: bool = True) -> None:
        """Sends what is still queued and stops the agents; DeliveryFailed if any span was lost,
        unless `check_delivery` is off: after a failure, the failure is what to report."""
        for agent in self._agents.values():
            agent.shutdown()
        lost = sum(exporter.lost for exporter in self._exporters)
        if lost and check_delivery:
            raise DeliveryFailed(f"the collector at {self.endpoint} did not accept {lost} spans")

    @contextmanager
    def closing(self) -> Iterator[EvaluationAgent]:
        """Closes at the end of the block, even when it raises; an exception from the block
        wins over lost spans (a SIGTERM must stop a predictor even when the collector was
        refusing spans)."""
        try:
            yield self
        except BaseException:
            self.close(check_delivery=False)
            raise
        self.close()


@dataclass(frozen=True)
class Origin:
    """Where results come from: one run id for all of them; a predictor's name and job id when
    the run is a queued job (mlscope predictor), empty for a local `mlscope evaluate`."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    predictor: str = ""
    job_id: str = ""


Progress = Callable[[int, int, str], None]
"""Called before each configuration and scenario: (index from 0, total, what it is)."""


def evaluate(plan: Plan, agents: Callable[[str], Agent], cache: AssetCache, system: System | None = None,
             progress: Progress = lambda index, total, what: None, origin: Origin | None = None) -> list[EvaluationResult]:
    """Runs `plan`, tracing each level's configurations with `agents(level)`; models are loaded
    once per manifest and level (a level's capture is set up at load)."""
    system = system or this_system()
    origin = origin or Origin()
    total = (len(plan.manifests) * len(plan.levels) * len(plan.frameworks) * len(plan.batch_sizes)
             * len(plan.scenarios))
    results: list[EvaluationResult] = []
    with agents(plan.levels[0]).span(EVALUATE_SPAN, attributes={EVALUATION_PREFIX + "run_id": origin.run_id}):
        for manifest in plan.manifests:
            raw = load_dataset(manifest.dataset, max_tokens=_max_tokens(manifest))
            divergences: dict[str, Divergence] | None = None
            for level in plan.levels:
                agent = agents(level)
                predictors = {framework: create_predictor(framework, manifest, agent, cache, plan.execution_provider)
                              for framework in plan.frameworks}
                try:
                    for predictor in predictors.values():
                        predictor.load()
                    if divergences is None:
                        divergences = _divergences(manifest, predictors, plan.batch_sizes[0])
                    for framework, predictor in predictors.items():
                        for batch_size in plan.batch_sizes:
                            base = _Configuration(plan, manifest, predictor, batch_size, level, origin, system,
                                                  divergences.get(framework), plan.frameworks[0])
                            for scenario in plan.scenarios:
                                progress(len(results), total, f"{manifest.name} {framework} batch {batch_size} "
                                                              f"{scenario} level {level}")
                                results.append(base.run(agent, scenario, raw.inputs))
                finally:
                    for predictor in predictors.values():
                        predictor.close()
    return results


def _max_tokens(manifest: Manifest) -> int:
    return manifest.input.shape[0] if manifest.input.dtype == "int64" else 0


def _divergences(manifest: Manifest, predictors: dict[str, Predictor], batch_size: int) -> dict[str, Divergence]:
    """Each framework's outputs against the first one's, on the first samples of the dataset."""
    if len(predictors) < 2:
        return {}
    inputs, _ = preprocessed_dataset(manifest, replace(manifest.dataset, samples=min(DIVERGENCE_SAMPLES, manifest.dataset.samples)))
    outputs = {framework: _predict_all(predictor, inputs, batch_size) for framework, predictor in predictors.items()}
    reference, *others = outputs
    return {framework: divergence(outputs[reference], outputs[framework]) for framework in others}


def _predict_all(predictor: Predictor, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predictor.predict(inputs[start:start + batch_size])
                           for start in range(0, len(inputs), batch_size)])


DROPPED_FLUSH_S = 30.0
"""How long a configuration waits for its deep spans to be sent before counting what they lost."""


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {level: count - before.get(level, 0) for level, count in after.items() if count > before.get(level, 0)}


_CLOCK = scenarios.Clock(time.perf_counter_ns, lambda ns: time.sleep(ns / 1e9))


@dataclass
class _Configuration:
    """One manifest x framework x batch size; its scenarios share the warm-up and accuracy."""

    plan: Plan
    manifest: Manifest
    predictor: Predictor
    batch_size: int
    level: str
    origin: Origin
    system: System
    divergence: Divergence | None
    reference: str

    def __post_init__(self) -> None:
        self._prepared: list[np.ndarray] | None = None
        self._service_ns: list[int] = []
        self._accuracy: tuple[float, float | None, int] | None = None

    def _issue(self, query: int) -> None:
        """One query: a batch through the model and the manifest's post-processing."""
        assert self._prepared is not None
        self.predictor.postprocess(self.predictor.predict(self._prepared[query % len(self._prepared)]))

    def _prepare(self, agent: Agent, samples: Sequence[np.ndarray]) -> None:
        if self._prepared is not None:
            return
        pool = min(QUERY_POOL, max(1, self.plan.repetitions))
        count = len(samples)
        self._prepared = [self.predictor.preprocess([samples[(q * self.batch_size + i) % count] for i in range(self.batch_size)])
                          for q in range(pool)]
        with agent.span("warmup", attributes={EVALUATION_QUERIES: self.plan.warmup}):
            self._service_ns += scenarios.back_to_back(self._issue, self.plan.warmup, _CLOCK).latencies_ns
        if self.plan.accuracy:
            self._accuracy = self._measure_accuracy(agent)

    def _measure_accuracy(self, agent: Agent) -> tuple[float, float | None, int] | None:
        inputs, labels = preprocessed_dataset(self.manifest)
        if labels is None:
            return None
        with agent.span("accuracy", attributes={EVALUATION_SAMPLES: len(labels)}):
            scores = _predict_all(self.predictor, inputs, self.batch_size)
        top5 = top_k_accuracy(scores, labels, 5) if scores.shape[1] >= 5 else None
        return top_k_accuracy(scores, labels, 1), top5, len(labels)

    def run(self, agent: Agent, scenario: str, samples: Sequence[np.ndarray]) -> EvaluationResult:
        attributes = {MODEL_NAME: self.manifest.name, FRAMEWORK_NAME: self.predictor.framework,
                      BATCH_SIZE: self.batch_size, EVALUATION_PREFIX + "scenario": scenario}
        with agent.span(SPAN_NAME, attributes=attributes) as span:
            dropped_before = agent.dropped_spans()
            self._prepare(agent, samples)
            server_qps, bound_ns = None, 0
            if scenario == "server":
                server_qps, bound_ns = self._server_targets()
                arrivals = scenarios.poisson_arrivals_ns(server_qps, self.plan.repetitions, self.plan.seed)
                run = scenarios.server(self._issue, arrivals, _CLOCK)
            else:
                run = scenarios.back_to_back(self._issue, self.plan.repetitions, _CLOCK)
                if scenario == "single-stream":
                    self._service_ns += run.latencies_ns
            # The measurement's deep spans written and sent first, so what they lost is counted here.
            agent.flush_deep_spans(DROPPED_FLUSH_S)
            dropped = _difference(agent.dropped_spans(), dropped_before)
            result = replace(self._result(scenario, run, server_qps, bound_ns), spans_dropped=sum(dropped.values()))
            if span is not None:
                span.set_attributes({**result.span_attributes(), **dropped_attributes(dropped)})
            return result

    def _server_targets(self) -> tuple[float, int]:
        """The plan's rate and bound, else defaults from the median service time seen so far."""
        if not self._service_ns:
            self._service_ns += scenarios.back_to_back(self._issue, 1, _CLOCK).latencies_ns
        service_ns = statistics.median(self._service_ns)
        qps = self.plan.server_qps or SERVER_LOAD * 1e9 / service_ns
        bound_ns = int(self.plan.server_bound_ms * 1e6) if self.plan.server_bound_ms else int(SERVER_BOUND_FACTOR * service_ns)
        return qps, bound_ns

    def _result(self, scenario: str, run: scenarios.Run, server_qps: float | None, bound_ns: int) -> EvaluationResult:
        summary = summarize(run.latencies_ns)
        samples = summary.count * self.batch_size
        top1, top5, accuracy_samples = self._accuracy or (None, None, 0)
        divergence_of = self.divergence
        return EvaluationResult(
            run_id=self.origin.run_id, model=self.manifest.name, model_version=self.manifest.version, task=self.manifest.task,
            framework=self.predictor.framework, framework_version=self.predictor.framework_version,
            execution_provider=self.predictor.execution_provider, system=self.system.fingerprint,
            system_name=self.system.name, system_description=self.system.description, batch_size=self.batch_size,
            scenario=scenario, level=self.level, queries=summary.count, samples=samples,
            latency_mean_ns=summary.mean_ns, latency_p50_ns=summary.p50_ns, latency_p90_ns=summary.p90_ns,
            latency_p99_ns=summary.p99_ns, throughput=samples * 1e9 / max(run.wall_ns, 1),
            accuracy_top1=top1, accuracy_top5=top5, accuracy_samples=accuracy_samples,
            server_qps=server_qps, server_bound_ns=bound_ns,
            server_bound_met=summary.p99_ns <= bound_ns if scenario == "server" else None,
            divergence_reference=self.reference if divergence_of else "",
            divergence_samples=divergence_of.samples if divergence_of else 0,
            divergence_max_abs_diff=divergence_of.max_abs_diff if divergence_of else None,
            divergence_top1_agreement=divergence_of.top1_agreement if divergence_of else None,
            predictor=self.origin.predictor, job_id=self.origin.job_id,
        )
