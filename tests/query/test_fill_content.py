"""The windowed read's cache (span_depth_fills) and whole-trace search over it are keyed by the
trace's row count in span_rows, which can come back over other rows: a copy a retry wrote is
counted until the store merges it away, and a new span then gives the count back. A fill made over
such copies is read only while the trace has as many distinct rows as then (schema 013). Both
backends."""

from __future__ import annotations

from tests.query.query_server import Served
from tests.query.trace_fixtures import KNOWN, MS, T0, TRACE, insert, row

LATE = row("00000000000000e6", "00000000000000a1", "late", 96, 99, "application")
WINDOW = f"/api/traces/{TRACE}/window?start_ns={T0}&end_ns={T0 + 100 * MS}&resolution_ns=1"


def rows_of(served: Served) -> int:
    return served.store.execute(f"SELECT count() FROM span_rows WHERE trace_id = '{TRACE}'").rows[0][0]


async def test_a_span_arriving_as_a_retried_copy_is_merged_away_is_drawn_and_found(served: Served) -> None:
    insert(served.store, KNOWN)
    insert(served.store, [KNOWN[1]])  # a retry's copy, in a part of its own (an insert's block is merged as written)
    assert rows_of(served) == len(KNOWN) + 1
    status, window = await served.get(WINDOW)  # fills the cache over the copy
    assert status == 200 and sorted(e["span_id"] for e in window["entries"]) == sorted(r["span_id"] for r in KNOWN)
    served.store.execute("OPTIMIZE TABLE span_rows FINAL")  # the copy merged away...
    insert(served.store, [LATE])  # ...and a new span: the count is what it was
    assert rows_of(served) == len(KNOWN) + 1
    status, window = await served.get(WINDOW)
    assert status == 200 and LATE["span_id"] in {e["span_id"] for e in window["entries"]}
    status, found = await served.get(f"/api/traces/{TRACE}/search?q=late")
    assert status == 200 and [m["span_id"] for m in found["matches"]] == [LATE["span_id"]]
