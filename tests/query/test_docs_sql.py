"""Every ```sql example in docs/sql.md runs through /api/sql on both backends and returns rows."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mlscope.dispatch.core import heartbeat_columns, parse_heartbeat
from mlscope.store import empty_columns
from tests.query.query_server import Served
from tests.query.trace_fixtures import KNOWN, T0, insert

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
EXAMPLES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.DOTALL)


def cpu_point() -> dict[str, list]:
    columns = empty_columns("metric_points")
    point = dict(service="svc", name="system.cpu.utilization", description="", unit="1", kind="gauge",
                 time_ns=T0, start_time_ns=0, value=0.5, count=0, bucket_bounds=[], bucket_counts=[],
                 attr_keys=[], attr_values=[], resource_keys=["host.name"], resource_values=["box"],
                 scope_name="tests", series_hash=1)
    for name, values in columns.items():
        values.append(point[name])
    return columns


def heartbeat() -> dict[str, list]:
    return heartbeat_columns(parse_heartbeat({
        "predictor_id": "a" * 32, "name": "gpu-box", "host": "h", "pid": 1, "started_ns": 1,
        "system": {"fingerprint": "0123456789abcdef", "name": "h", "description": ""},
        "execution_providers": ["pytorch/cpu"], "labels": {"gpu": "h200"}}), time.time_ns())


def test_the_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("query", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
async def test_doc_example_runs(served: Served, query: str) -> None:
    insert(served.store, KNOWN)
    served.store.insert("metric_points", cpu_point())
    served.store.insert("predictor_heartbeats", heartbeat())
    status, body = await served.sql(query)
    assert status == 200, body
    assert body["rows"], query
