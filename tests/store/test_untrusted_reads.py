"""Users' SQL (Store.read_untrusted) on both backends: an aborted query leaves nothing behind for
the next one, output is capped in rows and bytes whatever the query's shape, and the insert path
is not held back (issue 11, findings 4, 5 and 7)."""

from __future__ import annotations

import threading
import time

import pytest

from mlscope.query import SqlLimits, TraceReader
from mlscope.query.errors import Busy
from mlscope.query.reader import QueryFailed, limit_settings
from mlscope.store import OutputCap, Store, StoreError, open_store
from mlscope.store.model import SCHEMA_MIGRATIONS

# The reader's limits, less readonly (clickhouse-server 18.16 refuses table functions under it).
SETTINGS = {name: value for name, value in limit_settings(SqlLimits(max_rows=10)).items() if name != "readonly"}
CAP = OutputCap(max_rows=10, max_bytes=10_000)
# Fails after the engine has already written many blocks of output.
ABORTED = "SELECT number, throwIf(number = 300000) FROM numbers(400000)"


def test_an_aborted_user_query_leaves_nothing_for_the_next_read(store: Store) -> None:
    with pytest.raises(StoreError, match="395|throwIf|[Vv]alue passed"):
        store.read_untrusted(ABORTED, {"max_block_size": 1000}, OutputCap(10**9, 10**12))
    assert store.read_untrusted("SELECT 1 AS one", SETTINGS, CAP).result.rows == [(1,)]
    assert store.execute("SELECT 2 AS two").rows == [(2,)]


def test_an_aborted_internal_query_leaves_nothing_for_the_next_read(store: Store) -> None:
    # The store's own locked session (readyz, trace lists) after a query the engine aborts.
    with pytest.raises(StoreError, match="395|throwIf|[Vv]alue passed"):
        store.execute(ABORTED, {"max_block_size": 1000})
    assert store.execute("SELECT 2 AS two").rows == [(2,)]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT number FROM numbers(1000000)",
        # Each branch of a UNION got its own max_result_rows in the engine.
        "SELECT number FROM numbers(1000000000) UNION ALL SELECT number FROM numbers(1000000000)",
        "(SELECT number FROM numbers(100)) UNION ALL (SELECT number FROM numbers(100))",
    ],
)
def test_output_is_capped_in_rows_whatever_the_shape(store: Store, query: str) -> None:
    started = time.monotonic()
    capped = store.read_untrusted(query, SETTINGS, CAP)
    assert (len(capped.result.rows), capped.truncated) == (10, True)
    assert time.monotonic() - started < 30  # stopped, not run to the end (about 0.1 s unloaded)
    assert store.read_untrusted("SELECT 1 AS one", SETTINGS, CAP).result.rows == [(1,)]


def test_output_is_capped_in_bytes(store: Store) -> None:
    capped = store.read_untrusted(
        "SELECT arrayStringConcat(arrayMap(i -> 'x', range(3000))) AS wide FROM numbers(5) "
        "UNION ALL SELECT arrayStringConcat(arrayMap(i -> 'y', range(3000))) FROM numbers(5)",
        SETTINGS, CAP,
    )
    assert capped.truncated and 1 <= len(capped.result.rows) <= 3
    assert [column.name for column in capped.result.columns] == ["wide"]


def test_a_small_answer_is_whole_with_its_columns(store: Store) -> None:
    capped = store.read_untrusted("SELECT number AS n, toString(number) AS s FROM numbers(3)", SETTINGS, CAP)
    assert not capped.truncated
    assert capped.result.rows == [(0, "0"), (1, "1"), (2, "2")]
    assert [(column.name, column.type) for column in capped.result.columns] == [("n", "UInt64"), ("s", "String")]


def test_inserts_go_on_while_a_user_query_runs(store: Store) -> None:
    """A user's query no longer holds the lock the insert path needs (embedded) nor shares its
    connection (server): inserts finish while a long query is still running."""
    long_query_done = threading.Event()

    def long_query() -> None:
        try:
            store.read_untrusted(
                "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 3",
                {**SETTINGS, "max_execution_time": 6}, CAP,
            )
        except StoreError:
            pass  # the timeout
        finally:
            long_query_done.set()

    thread = threading.Thread(target=long_query)
    thread.start()
    try:
        time.sleep(0.5)
        for version in range(1000, 1005):
            store.insert(SCHEMA_MIGRATIONS.name, {"version": [version], "name": ["t"], "applied_ns": [0]})
        assert not long_query_done.is_set()  # the inserts did not wait for it
    finally:
        thread.join()


def test_the_reader_refuses_more_concurrent_queries_than_its_limit(tmp_path) -> None:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    reader = TraceReader(store, SqlLimits(max_concurrent=1, max_execution_time_s=3))
    started = threading.Event()
    errors: list[Exception] = []

    def long_query() -> None:
        started.set()
        try:
            reader.run_sql("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 3")
        except QueryFailed as exc:
            errors.append(exc)

    thread = threading.Thread(target=long_query)
    thread.start()
    try:
        started.wait()
        deadline = time.monotonic() + 20
        refused = None
        while refused is None and time.monotonic() < deadline and thread.is_alive():
            try:
                reader.run_sql("SELECT 1")
            except Busy as exc:
                refused = exc
            time.sleep(0.05)
        assert isinstance(refused, Busy) and "retry" in str(refused)
        thread.join()
        assert reader.run_sql("SELECT 1 AS one").rows == [[1]]
    finally:
        thread.join()
        store.close()


def test_a_user_read_on_the_embedded_store_runs_at_the_lowest_os_priority(tmp_path) -> None:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    try:
        # With the reader's own settings, readonly=1 last, as POST /api/sql sends them.
        answer = store.read_untrusted("SELECT getSetting('os_thread_priority') AS priority",
                                      limit_settings(SqlLimits(max_rows=10)), CAP)
        assert answer.result.rows == [(19,)]
        assert store.execute("SELECT getSetting('os_thread_priority') AS priority").rows == [(0,)]  # the store's own
    finally:
        store.close()
