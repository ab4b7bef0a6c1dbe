"""Evaluation results as a table and as figures: per-batch latency across frameworks (the
paper's Fig. 3) and, given a baseline system, latency across systems normalized to it (Fig. 4).

Rows are mappings with the `evaluations` table's column names, so the same code reports the
results `mlscope evaluate` just measured and rows read back from GET /api/evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlscope.conventions import LEVELS

Row = Mapping[str, Any]
FIGURE_SCENARIO = "single-stream"

_TABLE: tuple[tuple[str, str, Any], ...] = (
    # (header, column, format); a None, NaN or empty value prints as "-".
    ("model", "model", str),
    ("framework", "framework", str),
    ("provider", "execution_provider", str),
    ("batch", "batch_size", str),
    ("scenario", "scenario", str),
    ("level", "level", str),
    ("p50 ms", "latency_p50_ns", lambda ns: f"{ns / 1e6:.2f}"),
    ("p90 ms", "latency_p90_ns", lambda ns: f"{ns / 1e6:.2f}"),
    ("p99 ms", "latency_p99_ns", lambda ns: f"{ns / 1e6:.2f}"),
    ("samples/s", "throughput", lambda value: f"{value:.1f}"),
    ("top-1", "accuracy_top1", lambda value: f"{value:.3f}"),
    ("top-5", "accuracy_top5", lambda value: f"{value:.3f}"),
    ("server qps", "server_qps", lambda value: f"{value:.1f}"),
    ("p99<=bound", "server_bound_met", None),
    ("max|diff|", "divergence_max_abs_diff", lambda value: f"{value:.2e}"),
    ("top-1 agree", "divergence_top1_agreement", lambda value: f"{value:.3f}"),
    ("system", "system_name", str),
    ("predictor", "predictor", str),
    ("lost spans", "spans_dropped", lambda count: f"{count}*" if count else "-"),
    ("conflict", "conflict", lambda flag: "yes+" if flag else "-"),
)


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _cell(row: Row, column: str, formatter: Any) -> str:
    value = row.get(column)
    if column == "server_bound_met":
        return ("yes" if value else "no") if row.get("scenario") == "server" else "-"
    return "-" if _missing(value) else formatter(value)


def table(rows: Sequence[Row]) -> dict[str, list]:
    """The rows as a query answer ({"columns", "rows"}) of display strings."""
    return {
        "columns": [{"name": header} for header, _, _ in _TABLE],
        "rows": [[_cell(row, column, formatter) for _, column, formatter in _TABLE] for row in rows],
    }


def lost_spans_footnote(rows: Sequence[Row]) -> str:
    """The line under the table for configurations whose trace lost spans ("" when none did)."""
    affected = [row for row in rows if row.get("spans_dropped")]
    if not affected:
        return ""
    lost = sum(int(row["spans_dropped"]) for row in affected)
    return (f"* {len(affected)} configuration(s) lost {lost} spans of their trace (dropped under load or refused "
            "by the collector): their figures were measured, but their traces are incomplete\n")


def conflicts_footnote(rows: Sequence[Row]) -> str:
    """The line under the table for evaluations stored with more than one content ("" when
    none were): each copy is a row of its own, flagged `conflict` by the `evaluations` view."""
    conflicting = {(row["trace_id"], row["span_id"]) for row in rows if row.get("conflict")}
    if not conflicting:
        return ""
    return (f"+ {len(conflicting)} evaluation(s) were sent more than once with different content (the same trace "
            "and span ids): every copy is listed and none is in the figures; which one is right cannot be told here\n")


def footnotes(rows: Sequence[Row]) -> str:
    """Every line that goes under the table ("" when none does)."""
    return lost_spans_footnote(rows) + conflicts_footnote(rows)


def _latest(rows: Sequence[Row], *keys: str) -> dict[tuple, Row]:
    """The last row for each combination of `keys` (rows come oldest first)."""
    return {tuple(row[key] for key in keys): row for row in rows}


def _figure_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows the figures compare: single-stream, at the shallowest level traced (the one
    whose tracing costs least: deeper levels are there to show their own overhead), leaving out
    conflicting copies (a figure drawn from one of them would silently pick a side)."""
    single_stream = [row for row in rows if row["scenario"] == FIGURE_SCENARIO and not row.get("conflict")]
    levels = [row.get("level") or LEVELS[1] for row in single_stream]
    shallowest = min(levels, key=LEVELS.index, default=None)
    return [row for row, level in zip(single_stream, levels) if level == shallowest]


def latency_by_batch(rows: Sequence[Row]) -> dict[str, dict[int, float]]:
    """Fig. 3's data: framework -> batch size -> median latency (ms) in single-stream."""
    chosen = _latest(_figure_rows(rows), "framework", "batch_size")
    series: dict[str, dict[int, float]] = {}
    for (framework, batch_size), row in sorted(chosen.items()):
        series.setdefault(framework, {})[int(batch_size)] = row["latency_p50_ns"] / 1e6
    return series


def normalized_to_baseline(rows: Sequence[Row], baseline: str) -> dict[str, dict[str, float]]:
    """Fig. 4's data: system -> "framework/batch" -> latency over the baseline system's (<1 is
    faster). `baseline` is a system fingerprint or host name; configurations the baseline did
    not run are left out."""
    chosen = _latest(_figure_rows(rows), "system", "framework", "batch_size")
    systems = {row["system"] for row in chosen.values() if baseline in (row["system"], row["system_name"])}
    if not systems:
        raise ValueError(f"no single-stream results from a system named {baseline!r}")
    base_system = sorted(systems)[0]
    normalized: dict[str, dict[str, float]] = {}
    for (system, framework, batch_size), row in sorted(chosen.items()):
        base = chosen.get((base_system, framework, batch_size))
        if base is not None and base["latency_p50_ns"]:
            label = f"{row['system_name']} ({system[:6]})"
            normalized.setdefault(label, {})[f"{framework}/{batch_size}"] = row["latency_p50_ns"] / base["latency_p50_ns"]
    return normalized


def write_figure(rows: Sequence[Row], path: Path, baseline: str | None = None) -> None:
    """A PNG or SVG (by `path`'s suffix): Fig. 3, and Fig. 4 beside it when `baseline` is given."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    import matplotlib.pyplot as plt

    panels = [("latency", latency_by_batch(rows))]
    if baseline:
        panels.append(("normalized", normalized_to_baseline(rows, baseline)))
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    models = sorted({row["model"] for row in rows})
    for axis, (kind, series) in zip(axes[0], panels):
        categories = sorted({key for values in series.values() for key in values}, key=_natural)
        width = 0.8 / max(1, len(series))
        for index, (name, values) in enumerate(series.items()):
            positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(categories))]
            axis.bar(positions, [values.get(c, 0.0) for c in categories], width, label=name)
        axis.set_xticks(range(len(categories)), [str(c) for c in categories])
        if kind == "latency":
            axis.set(xlabel="batch size", ylabel="median latency (ms)",
                     title=f"{', '.join(models)}: latency per batch across frameworks")
        else:
            axis.axhline(1.0, color="grey", linewidth=0.8)
            axis.set(xlabel="framework/batch size", ylabel="latency / baseline",
                     title=f"latency normalized to {baseline}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _natural(key: Any) -> tuple:
    return (0, key, "") if isinstance(key, int) else (1, 0, str(key))
