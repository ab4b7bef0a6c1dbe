"""One conformance suite, the same fixtures, run against every store backend (embedded chdb and
a real clickhouse-server): what the collector writes is what every reader gets back."""

from __future__ import annotations

import pytest

from mlscope.store import (
    BadStoreUrl,
    Store,
    StoreError,
    StoreUnavailable,
    empty_columns,
    open_store,
    parse_store_url,
    sql_string,
)
from mlscope.store.base import schema_files
from mlscope.store.model import MONTHS_PER_INSERT, SPAN_ROWS, blocks_by_partition

TRACE = "0af7651916cd43dd8448eb211c80319c"
T0 = 1_764_000_000_000_000_000  # 2025-11-24, ns


def span_row(span_id: str, parent: str, name: str, start: int, end: int, **extra) -> dict:
    row = dict(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind="internal",
        service="svc",
        level="model",
        start_ns=start,
        end_ns=end,
        duration_ns=end - start,
        status_code="ok",
        status_message="",
        scope_name="scope",
        scope_version="1.0",
        attr_keys=["mlscope.model.name", "quote"],
        attr_values=["resnet18", "it's \\ \"x\" ü 🙂"],
        resource_keys=["service.name"],
        resource_values=["svc"],
        event_times_ns=[start + 1],
        event_names=["checkpoint"],
        event_attrs_json=['{"k": 1}'],
        links_json="[]",
    )
    row.update(extra)
    return row


def columns_of(rows: list[dict]):
    columns = empty_columns("span_rows")
    for row in rows:
        for name in columns:
            columns[name].append(row[name])
    return columns


SPANS = [
    span_row("00000000000000a1", "", "pipeline", T0, T0 + 1_000_000, level="application",
             attr_keys=["mlscope.framework.name"], attr_values=["pytorch"]),
    span_row("00000000000000b2", "00000000000000a1", "predict", T0 + 100, T0 + 900_000),
    span_row("00000000000000c3", "00000000000000b2", "conv1", T0 + 200, T0 + 300_000, level="layer"),
]


def test_migrate_is_idempotent_and_versioned(store: Store) -> None:
    assert store.migrate() == []
    applied = store.execute("SELECT version, name FROM schema_migrations ORDER BY version").rows
    assert [(v, n) for v, n in applied] == [(f.version, f.name) for f in schema_files()]
    tables = {row[0] for row in store.execute("SHOW TABLES").rows}
    assert {"span_rows", "spans", "trace_index", "metric_points", "metrics"} <= tables


def test_round_trip_every_column(store: Store) -> None:
    store.insert("span_rows", columns_of(SPANS))
    names = list(empty_columns("span_rows"))
    result = store.execute(f"SELECT {', '.join(names)} FROM spans ORDER BY start_ns")
    assert [c.name for c in result.columns] == names
    assert [dict(zip(names, row)) for row in result.rows] == SPANS


def test_duplicates_never_show_in_the_views(store: Store) -> None:
    # A client retry or a spool replay writes the same spans again.
    store.insert("span_rows", columns_of(SPANS))
    store.insert("span_rows", columns_of(SPANS[1:]))
    assert store.execute("SELECT count() FROM span_rows").rows == [(5,)]
    assert store.execute("SELECT count() FROM spans").rows == [(3,)]
    index = store.execute(
        "SELECT trace_id, minMerge(start_ns), maxMerge(end_ns), uniqExactMerge(span_count), "
        "anyIfMerge(root_name), anyIfMerge(root_service), anyIfMerge(model), anyIfMerge(framework) "
        "FROM trace_index GROUP BY trace_id"
    ).rows
    assert index == [(TRACE, T0, T0 + 1_000_000, 3, "pipeline", "svc", "resnet18", "pytorch")]


def test_attributes_read_by_key(store: Store) -> None:
    store.insert("span_rows", columns_of(SPANS))
    rows = store.execute(
        "SELECT name, attr_values[indexOf(attr_keys, 'mlscope.model.name')] AS model "
        "FROM spans ORDER BY start_ns"
    ).rows
    assert rows == [("pipeline", ""), ("predict", "resnet18"), ("conv1", "resnet18")]


def test_string_literals_cannot_break_out(store: Store) -> None:
    store.insert("span_rows", columns_of(SPANS))
    hostile = "x' OR 1=1 OR name != '\\"
    assert store.execute(f"SELECT count() FROM spans WHERE name = {sql_string(hostile)}").rows == [(0,)]
    exact = SPANS[0]["attr_values"][0]
    found = store.execute(f"SELECT count() FROM spans WHERE has(attr_values, {sql_string(exact)})").rows
    assert found == [(1,)]


def test_metrics_round_trip_and_dedup(store: Store) -> None:
    columns = empty_columns("metric_points")
    point = dict(service="svc", name="system.cpu.utilization", description="", unit="1", kind="gauge",
                 time_ns=T0, start_time_ns=0, value=0.25, count=0, bucket_bounds=[], bucket_counts=[],
                 attr_keys=["cpu"], attr_values=["0"], resource_keys=[], resource_values=[],
                 scope_name="mlscope", series_hash=42)
    for name in columns:
        columns[name].append(point[name])
    store.insert("metric_points", columns)
    store.insert("metric_points", columns)
    assert store.execute("SELECT name, value, attr_values FROM metrics").rows == [
        ("system.cpu.utilization", 0.25, ["0"])
    ]


def test_engine_errors_carry_clickhouse_codes(store: Store) -> None:
    with pytest.raises(StoreError) as caught:
        store.execute("SELECT no_such_column FROM spans")
    assert caught.value.code == 47  # UNKNOWN_IDENTIFIER
    assert "Stack trace" not in str(caught.value)
    with pytest.raises(StoreError):
        store.insert("span_rows", {"trace_id": ["x"]})


def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable):
        open_store("clickhouse://127.0.0.1:1/mlscope")


@pytest.mark.parametrize(
    "url",
    ["embedded://relative/dir", "embedded:relative", "postgres://h/db", "clickhouse:///db",
     "clickhouse://h:notaport/db", "clickhouse://h/bad-name;drop"],
)
def test_bad_store_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(BadStoreUrl, match="bad store URL"):
        parse_store_url(url)


def test_server_url_defaults() -> None:
    parsed = parse_store_url("clickhouse://u:p%40ss@db.example:9440/traces")
    assert (parsed.host, parsed.port, parsed.database, parsed.user, parsed.password) == (
        "db.example", 9440, "traces", "u", "p@ss")
    assert parse_store_url("clickhouse://h").port == 9000


MONTH_NS = 31 * 86_400 * 10**9


def test_rows_spanning_more_months_than_one_insert_may_touch_are_stored(store: Store) -> None:
    # ClickHouse refuses one insert block touching over 100 monthly partitions (chdb enforces
    # it); insert() splits by month, so one caller's rows are stored however far apart they are.
    rows = [span_row(f"{index + 1:016x}", "", f"month-{index}", T0 - index * MONTH_NS, T0 - index * MONTH_NS + 5)
            for index in range(150)]

    store.insert("span_rows", columns_of(rows))

    assert store.execute("SELECT count(), uniqExact(toYYYYMM(start_date)) FROM span_rows").rows == [(150, 150)]


def test_rows_within_a_few_months_go_in_one_block() -> None:
    columns = columns_of([span_row(f"{index + 1:016x}", "", "s", T0 + index * MONTH_NS, T0 + index * MONTH_NS)
                          for index in range(MONTHS_PER_INSERT - 1)])
    assert blocks_by_partition(SPAN_ROWS, columns) == [columns]
    spread = columns_of([span_row(f"{index + 1:016x}", "", "s", T0 + (index % 120) * MONTH_NS, T0)
                         for index in range(240)])
    blocks = blocks_by_partition(SPAN_ROWS, spread)
    assert [len(block["span_id"]) for block in blocks] == [100, 100, 40]  # 50, 50, 20 months of 2 rows
    assert sorted(span_id for block in blocks for span_id in block["span_id"]) == sorted(spread["span_id"])
