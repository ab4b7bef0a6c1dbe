"""GET /api/traces/{id}/counters: the trace's extent and span count, and the metric series its
services sampled over it (the viewer's counter tracks), on both store backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlscope.store import Store
from mlscope.store.model import METRIC_POINTS
from tests.query.trace_fixtures import MS, T0, TRACE, insert, row


_EMPTY = {"String": "", "UInt64": 0, "Float64": 0.0, "Array": []}  # by column type


def insert_samples(store: Store, samples: Sequence[tuple[str, str, str, float, float, dict[str, str]]]) -> None:
    """(service, name, unit, ms after T0, value, attributes) gauge samples into `metric_points`."""
    columns = METRIC_POINTS.empty_columns()
    for service, name, unit, at_ms, value, attributes in samples:
        values: dict[str, Any] = {
            "service": service, "name": name, "unit": unit, "kind": "gauge", "time_ns": T0 + int(at_ms * MS),
            "start_time_ns": T0, "value": value, "attr_keys": list(attributes), "attr_values": list(attributes.values()),
            "series_hash": hash((name, tuple(attributes.items()))) & (2**63 - 1)}
        for column in METRIC_POINTS.columns:
            columns[column.name].append(values.get(column.name, _EMPTY[column.type.split("(")[0]]))
    store.insert(METRIC_POINTS.name, columns)


async def test_counters_group_samples_per_series(served) -> None:
    insert(served.store, [row("a", "", "run", 0, 100), row("b", "a", "step", 10, 90)])
    insert_samples(served.store, [
        ("svc", "system.cpu.utilization", "1", 0, 0.25, {}),
        ("svc", "system.cpu.utilization", "1", 50, 0.75, {}),
        ("svc", "hw.gpu.utilization", "1", 40, 0.5, {"hw.id": "gpu0"}),
        ("other", "system.cpu.utilization", "1", 50, 1.0, {}),  # another service's: not this trace's
    ])
    status, body = await served.get(f"/api/traces/{TRACE}/counters")
    assert status == 200
    assert (body["start_ns"], body["end_ns"], body["span_count"]) == (T0, T0 + 100 * MS, 2)
    series = {(s["name"], tuple(s["attributes"].items())): s for s in body["series"]}
    assert set(series) == {("system.cpu.utilization", ()), ("hw.gpu.utilization", (("hw.id", "gpu0"),))}
    cpu = series[("system.cpu.utilization", ())]
    assert (cpu["offset_ns"], cpu["value"], cpu["unit"], cpu["service"]) == ([0, 50 * MS], [0.25, 0.75], "1", "svc")


async def test_counters_errors(served) -> None:
    assert (await served.get("/api/traces/nothex/counters"))[0] == 400
    assert (await served.get(f"/api/traces/{'f' * 32}/counters"))[0] == 404
