"""A span re-sent with stored ids (schema/011): a retry collapses, other content is kept beside
the first (never a silent overwrite), on both backends; and the migration keeps the rows stored
before it and the materialized views over span_rows working."""

from __future__ import annotations

import pytest

from mlscope.conventions import EVALUATION_PREFIX, EVALUATION_SPAN
from mlscope.store import Store, open_store
from mlscope.store import base as store_base

from .test_store_conformance import SPANS, T0, TRACE, columns_of, span_row

CONTENT_KEY_VERSION = 11
MONTH_NS = 31 * 86_400 * 10**9


def _span_names(store: Store, span_id: str) -> list[str]:
    return [row[0] for row in store.execute(
        f"SELECT name FROM spans WHERE trace_id = '{TRACE}' AND span_id = '{span_id}' ORDER BY name").rows]


def _span_count(store: Store, trace_id: str) -> int:
    rows = store.execute(
        f"SELECT uniqExactMerge(span_count) FROM trace_index WHERE trace_id = '{trace_id}' GROUP BY trace_id").rows
    return rows[0][0] if rows else 0


def test_a_retry_collapses_and_other_content_under_the_same_ids_is_kept(store: Store) -> None:
    store.insert("span_rows", columns_of(SPANS))
    store.insert("span_rows", columns_of(SPANS))  # a client's retry, byte for byte
    assert store.execute("SELECT count() FROM spans").rows == [(3,)]
    changed = {**SPANS[1], "name": "predict-forged", "attr_values": ["other", "x"]}
    store.insert("span_rows", columns_of([changed]))
    assert _span_names(store, SPANS[1]["span_id"]) == ["predict", "predict-forged"]
    assert store.execute("SELECT count() FROM spans").rows == [(4,)]
    assert _span_count(store, TRACE) == 3  # the trace index counts ids, not copies


def _evaluation_span(span_id: str, start: int, model: str) -> dict:
    return span_row(span_id, "", EVALUATION_SPAN, start, start + 1_000, level="application",
                    attr_keys=[EVALUATION_PREFIX + "model", EVALUATION_PREFIX + "throughput"],
                    attr_values=[model, "12.5"])


def open_store_before(store_url: str, version: int, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The store at `store_url` as the schema files before `version` left it; its migrate()
    applies the rest."""
    every_file = store_base.schema_files()
    monkeypatch.setattr(store_base, "schema_files", lambda: tuple(f for f in every_file if f.version < version))
    try:
        return open_store(store_url)
    finally:
        monkeypatch.undo()


def test_the_migration_keeps_stored_rows_and_the_views_over_them_work(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store_before(store_url, CONTENT_KEY_VERSION, monkeypatch)
    try:
        # Before 011: spans of one trace, an evaluation, and a trace spread over 150 months (the
        # copy into the keyed table must take more partitions than one insert block may touch).
        old_trace = "1" * 32
        spread = [{**span_row(f"{index + 1:016x}", "", "monthly", T0 - index * MONTH_NS, T0 - index * MONTH_NS + 5),
                   "trace_id": old_trace} for index in range(150)]
        store.insert("span_rows", columns_of([*SPANS, _evaluation_span("00000000000000e1", T0, "resnet18"), *spread]))
        assert store.migrate()[0] == "011_span_content.sql"  # and any later file

        assert store.execute("SELECT count() FROM spans").rows == [(154,)]
        assert store.execute("SELECT countIf(content_hash = 0) FROM spans").rows == [(0,)]
        # A retry that straddles the upgrade still collapses: old rows got their hash in the copy.
        store.insert("span_rows", columns_of(SPANS))
        assert store.execute("SELECT count() FROM spans").rows == [(154,)]
        assert store.execute("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                             "AND name = 'span_rows'").rows == [("trace_id, span_id, content_hash",)]

        # Both materialized views follow the rebuilt table: new spans and evaluations arrive.
        new_trace = "2" * 32
        store.insert("span_rows", columns_of([{**span_row("00000000000000f1", "", "later", T0, T0 + 9),
                                               "trace_id": new_trace},
                                              _evaluation_span("00000000000000e2", T0 + 10, "vit")]))
        assert (_span_count(store, TRACE), _span_count(store, old_trace), _span_count(store, new_trace)) == (5, 150, 1)
        assert store.execute("SELECT model, throughput FROM evaluations ORDER BY model").rows == [
            ("resnet18", 12.5), ("vit", 12.5)]
        assert store.migrate() == []
    finally:
        store.close()
