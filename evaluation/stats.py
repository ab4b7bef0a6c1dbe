"""Pure statistics of an evaluation: latency percentiles, top-k accuracy, and the divergence
between two frameworks' outputs for the same inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def percentile(values: Sequence[int], fraction: float) -> int:
    """Nearest rank (MLPerf's rule): the smallest observed value that at least `fraction` of the
    values do not exceed, so a reported p99 is a latency that really happened."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ns: float
    p50_ns: int
    p90_ns: int
    p99_ns: int


def summarize(latencies_ns: Sequence[int]) -> LatencySummary:
    return LatencySummary(
        count=len(latencies_ns),
        mean_ns=sum(latencies_ns) / len(latencies_ns),
        p50_ns=percentile(latencies_ns, 0.50),
        p90_ns=percentile(latencies_ns, 0.90),
        p99_ns=percentile(latencies_ns, 0.99),
    )


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among their k highest scores (ties: lower index first)."""
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


@dataclass(frozen=True)
class Divergence:
    """How far one framework's outputs are from a reference framework's on the same samples."""

    samples: int
    max_abs_diff: float
    top1_agreement: float  # fraction of samples whose best class is the same


def divergence(reference: np.ndarray, other: np.ndarray) -> Divergence:
    if reference.shape != other.shape:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {other.shape}")
    return Divergence(
        samples=len(reference),
        max_abs_diff=float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64)))),
        top1_agreement=float((reference.argmax(axis=1) == other.argmax(axis=1)).mean()),
    )
