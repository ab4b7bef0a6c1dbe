"""The pure cores of evaluations: statistics, scenario schedules (on a fake clock: nothing
sleeps), divergence, the system fingerprint, report data and the /api/evaluations filter."""

from __future__ import annotations

import numpy as np
import pytest

from mlscope.evaluation import scenarios
from mlscope.evaluation.report import latency_by_batch, normalized_to_baseline, table
from mlscope.evaluation.stats import divergence, percentile, summarize, top_k_accuracy
from mlscope.evaluation.system import describe
from mlscope.query.errors import BadRequest
from mlscope.query.evaluations import EvaluationFilter, evaluations_sql, parse_evaluation_filter


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99)) == (50, 90, 99)
    assert percentile([7], 0.99) == 7
    assert percentile([30, 10, 20], 0.5) == 20
    summary = summarize([10, 20, 30, 40])
    assert (summary.count, summary.mean_ns, summary.p50_ns, summary.p99_ns) == (4, 25.0, 20, 40)
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_top_k_accuracy_and_divergence() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    other = scores + np.array([[0, 0, 0], [0, 0.3, 0], [0, 0, 0]])
    result = divergence(scores, other)
    assert (result.samples, result.max_abs_diff, result.top1_agreement) == (3, pytest.approx(0.3), pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="shape"):
        divergence(scores, scores[:2])


class FakeClock:
    """Time moves only when a query runs (by its service time) or the loop sleeps."""

    def __init__(self, service_ns: list[int]) -> None:
        self.now = 1_000
        self.service_ns = service_ns
        self.slept: list[int] = []

    def clock(self) -> scenarios.Clock:
        return scenarios.Clock(lambda: self.now, self._sleep)

    def _sleep(self, ns: int) -> None:
        self.slept.append(ns)
        self.now += ns

    def issue(self, query: int) -> None:
        self.now += self.service_ns[query]


def test_back_to_back_times_each_query() -> None:
    fake = FakeClock([5, 7, 3])
    run = scenarios.back_to_back(fake.issue, 3, fake.clock())
    assert run == scenarios.Run((5, 7, 3), 15)


def test_server_counts_queueing_from_each_arrival() -> None:
    fake = FakeClock([20, 20, 20, 20])
    # The second query arrives while the first runs (waits 10), the third finds the worker busy
    # too, the fourth arrives after an idle gap (the loop sleeps until then).
    run = scenarios.server(fake.issue, (0, 10, 30, 100), fake.clock())
    assert run.latencies_ns == (20, 30, 30, 20)
    assert fake.slept == [40] and run.wall_ns == 120


def test_poisson_arrivals_are_seeded_and_at_the_rate() -> None:
    arrivals = scenarios.poisson_arrivals_ns(100.0, 5000, seed=3)
    assert arrivals == scenarios.poisson_arrivals_ns(100.0, 5000, seed=3)
    assert arrivals != scenarios.poisson_arrivals_ns(100.0, 5000, seed=4)
    assert arrivals[0] == 0 and all(b >= a for a, b in zip(arrivals, arrivals[1:]))
    assert len(arrivals) / (arrivals[-1] / 1e9) == pytest.approx(100.0, rel=0.05)


def test_system_fingerprint_follows_the_stack() -> None:
    stack = {"machine": "x86_64", "cpu": "EPYC", "cpus": 2, "memory_bytes": 2**34, "gpus": [], "os": "Linux 6",
             "python": "3.11.7", "libraries": {"torch": "2.13.0", "onnxruntime": "1.32.0"}}
    system = describe(stack, "host-a")
    assert system == describe(dict(reversed(list(stack.items()))), "host-a")  # key order does not matter
    assert len(system.fingerprint) == 16 and "EPYC (2 CPUs, 16 GiB)" in system.description
    assert describe({**stack, "libraries": {"torch": "2.14.0", "onnxruntime": "1.32.0"}}, "host-a").fingerprint != system.fingerprint
    assert describe(stack, "host-b").fingerprint == system.fingerprint  # the stack, not the name


def _row(system: str, framework: str, batch: int, p50_ms: float, scenario: str = "single-stream") -> dict:
    return {"model": "m", "system": system, "system_name": f"host-{system}", "framework": framework,
            "execution_provider": "cpu", "batch_size": batch, "scenario": scenario, "latency_p50_ns": int(p50_ms * 1e6),
            "latency_p90_ns": 0, "latency_p99_ns": 0, "throughput": float("nan"), "accuracy_top1": None,
            "server_bound_met": 0}


def test_report_data_for_both_figures() -> None:
    rows = [_row("a", "pytorch", 1, 10), _row("a", "pytorch", 8, 60), _row("a", "onnxruntime", 1, 8),
            _row("a", "pytorch", 1, 12),  # a later run of the same configuration wins
            _row("a", "pytorch", 1, 99, scenario="offline"),
            _row("b", "pytorch", 1, 6), _row("b", "onnxruntime", 8, 1)]
    assert latency_by_batch([r for r in rows if r["system"] == "a"]) == {
        "onnxruntime": {1: 8.0}, "pytorch": {1: 12.0, 8: 60.0}}
    normalized = normalized_to_baseline(rows, "host-a")
    assert normalized["host-b (b)"] == {"pytorch/1": pytest.approx(0.5)}  # b's onnxruntime/8 has no baseline
    assert normalized["host-a (a)"]["pytorch/8"] == 1.0
    with pytest.raises(ValueError, match="no single-stream results"):
        normalized_to_baseline(rows, "host-z")
    answer = table([rows[0]])
    cells = dict(zip((c["name"] for c in answer["columns"]), answer["rows"][0]))
    assert (cells["p50 ms"], cells["samples/s"], cells["top-1"], cells["p99<=bound"]) == ("10.00", "-", "-", "-")


def test_evaluation_filter_parsing_and_sql() -> None:
    parsed = parse_evaluation_filter({"model": "resnet18", "framework": "", "batch_size": "8", "other": "x"})
    assert parsed == EvaluationFilter(model="resnet18", batch_size=8)
    assert evaluations_sql(parsed).startswith(
        "SELECT * FROM evaluations WHERE model = 'resnet18' AND batch_size = 8 ORDER BY")
    assert "model = 'x\\' OR 1'" in evaluations_sql(EvaluationFilter(model="x' OR 1"))
    for bad in ("eight", "-1"):
        with pytest.raises(BadRequest, match="batch_size"):
            parse_evaluation_filter({"batch_size": bad})
