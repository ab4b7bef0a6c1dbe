"""Hardware level end to end: an agent in this process runs torch batches against a real
`mlscope serve`; CPU samples land in `metrics` and the predict spans carry mlscope.hw.*."""

from __future__ import annotations

import time

import torch

from mlscope.agents import start_agent

from tests.e2e.served_process import Served


def sql_rows(served: Served, query: str) -> list[list]:
    status, result = served.post_json("/api/sql", {"query": query})
    assert status == 200, result
    return result["rows"]


def wait_rows(served: Served, query: str, at_least: int) -> list[list]:
    deadline = time.monotonic() + 20
    while True:
        rows = sql_rows(served, query)
        if (rows and rows[0][0] >= at_least) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_hardware_level_exports_samples_and_span_aggregates(served: Served) -> None:
    service = "hw-e2e"
    agent = start_agent(service, endpoint=f"http://127.0.0.1:{served.ports['otlp-http']}", level="hardware")
    model = agent.trace_model(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU()).eval(), name="tiny")
    with torch.inference_mode():
        for _ in range(5):
            model(torch.ones(4, 3, 64, 64))
            time.sleep(0.05)
    agent.shutdown()

    samples = wait_rows(served, f"SELECT count(), min(value), max(value) FROM metrics WHERE service = '{service}' "
                                "AND name = 'system.cpu.utilization' AND length(attr_keys) = 0", 2)
    count, low, high = samples[0]
    assert count >= 2 and 0.0 <= low <= high <= 1.0
    rss = sql_rows(served, f"SELECT count(), min(value), any(unit) FROM metrics WHERE service = '{service}' "
                           "AND name = 'process.memory.usage'")
    assert rss[0][0] >= 2 and rss[0][1] > 10 << 20 and rss[0][2] == "By"
    spans = wait_rows(served, f"SELECT count() FROM spans WHERE service = '{service}' AND name = 'predict'", 5)
    assert spans == [[5]]
    attributes = sql_rows(served, f"SELECT attr_keys, attr_values FROM spans WHERE service = '{service}' "
                                  "AND name = 'predict' LIMIT 1")
    keys, values = attributes[0]
    hw = dict((k, v) for k, v in zip(keys, values) if k.startswith("mlscope.hw."))
    assert {"mlscope.hw.samples", "mlscope.hw.memory.peak_rss", "mlscope.hw.process.cpu.utilization"} <= set(hw)
    assert float(hw["mlscope.hw.memory.peak_rss"]) > 10 << 20
