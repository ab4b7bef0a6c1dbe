"""A span re-sent through the collector: a retry of the same request stores each span once, a
span sent again with its ids and other content is kept beside the first, and the trace's
timeline shows one of them with a warning (issue 11, integrity)."""

from __future__ import annotations

import aiohttp

from mlscope.collector import Collector
from mlscope.query.reader import TraceReader
from mlscope.query.timeline import build_timeline
from mlscope.store import Store
from tests.collector.collector_testing import post, span_ids, span_request


async def test_a_retry_is_stored_once_and_a_conflicting_resend_is_kept_and_flagged(
        collector: Collector, session: aiohttp.ClientSession, store: Store) -> None:
    url = f"http://127.0.0.1:{collector.http_port}/v1/traces"
    request = span_request(3)
    trace_id = request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    for _ in range(2):  # the client's retry: the same bytes
        assert (await post(session, url, request.SerializeToString()))[0] == 200
    assert store.execute(f"SELECT count() FROM spans WHERE trace_id = '{trace_id}'").rows == [(3,)]

    forged = request.resource_spans[0].scope_spans[0].spans[1]
    forged.name = "op-forged"
    assert (await post(session, url, request.SerializeToString()))[0] == 200
    names = store.execute(f"SELECT name FROM spans WHERE span_id = '{forged.span_id.hex()}' ORDER BY name").rows
    assert names == [("op-1",), ("op-forged",)]

    timeline = build_timeline(trace_id, TraceReader(store).trace_spans(trace_id))
    assert [item.span.span_id for item in timeline.spans] == span_ids(request)
    conflicts = [warning for warning in timeline.warnings if "different content" in warning]
    assert conflicts == [f"span {forged.span_id.hex()}: sent 2 times with different content; kept the earliest"]
