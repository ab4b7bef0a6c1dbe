"""The documented span JSON built by the store (SPAN_FIELDS_COLUMN) means what the Python
rendering of the same row means, awkward values included, on both backends."""

from __future__ import annotations

import json

from mlscope.store import SPAN_ROWS, Store
from mlscope.query.reader import TraceReader
from mlscope.query.timeline import SPAN_FIELDS_COLUMN, span_fields_json
from tests.query.trace_fixtures import TRACE, columns_of, row


def test_store_built_span_json_reads_as_the_python_rendering(store: Store) -> None:
    awkward = row("00000000000000a1", "", 'quote " back \\ slash / é 𝄞 \x01\n\t', 0, 10, "kernel",
                  attributes={"k\"ey": "v\u2028al\x1f", "empty": ""})
    awkward.update(event_times_ns=[1, 2], event_names=["ok", "damaged"], event_attrs_json=['{"a": [1]}', '{oops'],
                   links_json="not json", status_message="ünïcode")
    plain = row("00000000000000b2", "00000000000000a1", "child", 1, 2, "layer")
    plain.update(event_times_ns=[], event_names=[], event_attrs_json=[], links_json="")
    store.insert("span_rows", columns_of([awkward, plain]))
    reader = TraceReader(store)
    stored = reader.trace_columns(TRACE, ("span_id", SPAN_FIELDS_COLUMN))
    expected = span_fields_json(reader.trace_columns(TRACE, SPAN_ROWS.column_names))
    assert [json.loads("{" + text + "}") for text in stored[SPAN_FIELDS_COLUMN]] == [
        json.loads("{" + text + "}") for text in expected]
    assert json.loads("{" + stored[SPAN_FIELDS_COLUMN][0] + "}")["level"] == "application"
