"""An evaluation re-sent with stored ids (schema/012), on both backends: a retry still folds into
one `evaluations` row; other content under the same ids is kept as a row of its own and every copy
is flagged `conflict`. The migration brings back the copies the old key had folded, keeps rows
whose span is gone, and leaves the materialized view working."""

from __future__ import annotations

import pytest

from mlscope.conventions import EVALUATION_PREFIX, EVALUATION_SPAN
from mlscope.store import Store
from mlscope.store import base as store_base

from .test_span_content import open_store_before
from .test_store_conformance import T0, columns_of, span_row

EVALUATION_CONTENT_VERSION = 12
MONTH_NS = 31 * 86_400 * 10**9


def _evaluation(span_id: str, start: int, model: str = "resnet18", throughput: str = "12.5") -> dict:
    return span_row(span_id, "", EVALUATION_SPAN, start, start + 1_000, level="application",
                    attr_keys=[EVALUATION_PREFIX + "model", EVALUATION_PREFIX + "throughput"],
                    attr_values=[model, throughput])


def _rows(store: Store) -> list[tuple]:
    """(span_id, model, throughput, conflict) of every `evaluations` row, in a stable order."""
    return sorted(store.execute("SELECT span_id, model, throughput, conflict FROM evaluations").rows)


def test_a_retry_folds_and_a_conflicting_copy_is_kept_and_flagged(store: Store) -> None:
    first, other = _evaluation("00000000000000e1", T0), _evaluation("00000000000000e2", T0 + 5)
    store.insert("span_rows", columns_of([first, other]))
    store.insert("span_rows", columns_of([first, other]))  # a client's retry, byte for byte
    assert _rows(store) == [("00000000000000e1", "resnet18", 12.5, 0), ("00000000000000e2", "resnet18", 12.5, 0)]

    # The same ids with other figures, and with another model (another sorting-key prefix).
    store.insert("span_rows", columns_of([{**first, "attr_values": ["resnet18", "99.0"]},
                                          {**first, "attr_values": ["vit", "12.5"]}]))
    assert _rows(store) == [("00000000000000e1", "resnet18", 12.5, 1), ("00000000000000e1", "resnet18", 99.0, 1),
                            ("00000000000000e1", "vit", 12.5, 1), ("00000000000000e2", "resnet18", 12.5, 0)]
    # Each row names the span copy it came from.
    assert store.execute(
        "SELECT count() FROM evaluations AS e "
        "WHERE (trace_id, span_id, content_hash) IN (SELECT trace_id, span_id, content_hash FROM spans)").rows == [(4,)]


def test_the_migration_brings_back_folded_copies_and_keeps_rows_without_a_span(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store_before(store_url, EVALUATION_CONTENT_VERSION, monkeypatch)
    try:
        # Before 012: an evaluation sent twice with different figures (span_rows keeps both, the
        # old key folds them into one row), evaluations over 150 months (the copies must take more
        # partitions than one insert block may touch), and a row whose span is no longer stored.
        conflicted = _evaluation("00000000000000e1", T0)
        monthly = [_evaluation(f"{index + 1:016x}", T0 - (index + 1) * MONTH_NS, model="monthly")
                   for index in range(150)]
        store.insert("span_rows", columns_of([conflicted, *monthly]))
        store.insert("span_rows", columns_of([{**conflicted, "attr_values": ["resnet18", "99.0"]}]))
        store.execute("INSERT INTO evaluation_rows (trace_id, span_id, time_ns, model) "
                      f"SELECT '{'9' * 32}', '00000000000000f9', toUInt64({T0}), 'spanless'")
        assert store.execute("SELECT count() FROM evaluations WHERE span_id = '00000000000000e1'").rows == [(1,)]
        assert store.migrate()[0] == "012_evaluation_content.sql"  # later schema files may follow

        assert store.execute("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                             "AND name = 'evaluation_rows'").rows == [
            ("model, framework, batch_size, scenario, trace_id, span_id, content_hash",)]
        assert store.execute("SELECT model, count(), sum(conflict), countIf(content_hash = 0) FROM evaluations "
                             "GROUP BY model ORDER BY model").rows == [
            ("monthly", 150, 0, 0), ("resnet18", 2, 2, 0), ("spanless", 1, 0, 1)]
        assert store.execute("SELECT count() FROM spans").rows == [(152,)]  # the re-insert folded there
        # A retry straddling the upgrade folds; the view over span_rows fills the new table.
        store.insert("span_rows", columns_of([conflicted, _evaluation("00000000000000e3", T0 + 7, model="vit")]))
        assert ("00000000000000e3", "vit", 12.5, 0) in _rows(store)
        assert store.execute("SELECT count() FROM evaluations WHERE model = 'resnet18'").rows == [(2,)]
        # Run again as after an interruption: the same rows, the views still working.
        store.apply_schema_file(next(f for f in store_base.schema_files() if f.version == EVALUATION_CONTENT_VERSION))
        assert store.execute("SELECT model, count() FROM evaluations GROUP BY model ORDER BY model").rows == [
            ("monthly", 150), ("resnet18", 2), ("spanless", 1), ("vit", 1)]
        assert store.migrate() == []
    finally:
        store.close()
