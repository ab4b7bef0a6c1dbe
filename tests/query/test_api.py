"""The HTTP API against a real server, over both store backends (embedded chdb and
clickhouse-server 18.16) from the same rows."""

from __future__ import annotations

import aiohttp
from deploy import clickhouse_local_server
import pytest

from mlscope.conventions import (
    DEFAULT_LEVEL, LAYER_PATH, LAYER_TYPE, LEVELS, PROCESS_ORPHANED, PROCESS_PID, THREAD_ID, THREAD_NAME,
)
from mlscope.query import SqlLimits, create_query_app
from mlscope.query.export import EXPORTERS
from mlscope.query.reader import limit_settings
from mlscope.query.sqlguard import SAFE_TABLE_FUNCTIONS, check_query, is_refused_function
from mlscope.query.timeline import build_timeline
from mlscope.store import OutputCap, Store, open_store
from mlscope.ui import PAGES
from tests.query.query_server import COLLECTOR_STATUS, SQL_MAX_ROWS, Served, serve
from tests.query.trace_fixtures import KNOWN, KNOWN_SHAPE, MS, T0, TRACE, insert, row, spans

LATER = "0000000000000000000000000000beef"
ORPHANS = "00000000000000000000000000000bad"
OTHER = [
    row("00000000000000e1", "", "serve-request", 200, 205, trace_id=LATER, service="web",
        attributes={"mlscope.model.name": "bert"}),
    row("00000000000000e2", "00000000000000e1", "tokenize", 201, 202, "model", trace_id=LATER, service="web"),
]
STRAY = [row("00000000000000f1", "00000000000000ff", "stray", 300, 301, "layer", trace_id=ORPHANS)]


@pytest.fixture
async def api(served: Served) -> Served:
    insert(served.store, KNOWN + OTHER + STRAY)
    return served


async def test_health_and_readiness(api: Served) -> None:
    assert await api.get("/healthz") == (200, {"status": "ok"})
    status, body = await api.get("/readyz")
    assert 0 <= body.pop("store_state_age_s") < 1
    assert (status, body) == (200, {"status": "ready", "store": api.store.url, "collector": COLLECTOR_STATUS})


async def test_openapi_documents_exactly_the_api_routes(api: Served) -> None:
    status, document = await api.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    app = create_query_app(api.store)
    viewer = {*PAGES, "/static/{name}"}
    served_routes = {(route.method, route.resource.canonical) for route in app.router.routes()
                     if route.method != "HEAD" and route.resource.canonical not in viewer}
    assert documented == served_routes
    assert ("POST", "/api/sql") in documented


async def test_conventions_come_from_the_conventions_module(api: Served) -> None:
    status, body = await api.get("/api/conventions")
    assert (status, body["levels"], body["default_level"]) == (200, list(LEVELS), DEFAULT_LEVEL)
    assert body["attributes"] == {"process_pid": PROCESS_PID, "thread_id": THREAD_ID, "thread_name": THREAD_NAME,
                                  "layer_path": LAYER_PATH, "layer_type": LAYER_TYPE}


# --- listing ----------------------------------------------------------------------------------


async def test_traces_newest_first_with_their_summary(api: Served) -> None:
    status, body = await api.get("/api/traces")
    assert status == 200
    assert [t["trace_id"] for t in body["traces"]] == [ORPHANS, LATER, TRACE]
    known = body["traces"][2]
    assert known == {"trace_id": TRACE, "root_name": "pipeline", "service": "svc", "start_ns": T0,
                     "end_ns": T0 + 100 * MS, "duration_ns": 100 * MS, "span_count": 5,
                     "model": "resnet18", "framework": "pytorch"}
    # A trace without a root span is still listed, named by nothing, its service from any span.
    assert (body["traces"][0]["root_name"], body["traces"][0]["service"]) == ("", "svc")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("service=web", [LATER]),
        ("model=resnet18", [TRACE]),
        ("framework=pytorch", [TRACE]),
        ("model=nothing", []),
        (f"min_duration_ns={10 * MS}", [TRACE]),
        (f"since_ns={T0 + 200 * MS}", [ORPHANS, LATER]),
        (f"until_ns={T0 + 200 * MS}", [TRACE]),
        (f"since_ns={T0}&until_ns={T0 + 201 * MS}&service=web", [LATER]),
        ("limit=1", [ORPHANS]),
        ("service=x'%20OR%201=1%20--", []),
    ],
)
async def test_trace_filters(api: Served, query: str, expected: list[str]) -> None:
    status, body = await api.get(f"/api/traces?{query}")
    assert (status, [t["trace_id"] for t in body["traces"]]) == (200, expected)


async def test_bad_listing_parameter_is_a_400(api: Served) -> None:
    assert await api.get("/api/traces?limit=lots") == (400, {"error": "limit must be an integer, not 'lots'"})


# --- one trace --------------------------------------------------------------------------------


async def test_trace_tree_order_depth_and_self_time(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}")
    assert status == 200
    assert (body["trace_id"], body["warnings"]) == (TRACE, [])
    assert [(s["name"], s["depth"], s["self_ns"] / MS) for s in body["spans"]] == KNOWN_SHAPE
    root = body["spans"][0]
    assert (root["parent_span_id"], root["start_ns"], root["attributes"]["mlscope.model.name"]) == ("", T0, "resnet18")


async def test_trace_id_in_upper_case_is_normalized(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE.upper()}")
    assert (status, body["trace_id"], len(body["spans"])) == (200, TRACE, 5)


async def test_orphan_warning(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{ORPHANS}")
    assert status == 200
    assert [(s["name"], s["depth"]) for s in body["spans"]] == [("stray", 0)]
    assert body["warnings"] == ["span 00000000000000f1: parent 00000000000000ff not in trace"]


@pytest.mark.parametrize("query", ["", "?levels=application", "?max_depth=1", "?format=compact"])
async def test_a_process_marked_as_outliving_its_parent_is_not_warned_about(served: Served, query: str) -> None:
    trace = "000000000000000000000000000a11ce"
    insert(served.store, [
        row("00000000000000a1", "", "program", 0, 10, trace_id=trace),
        row("00000000000000a2", "00000000000000a1", "helper", 5, 30, trace_id=trace,
            attributes={PROCESS_ORPHANED: "true"}),
        row("00000000000000a3", "00000000000000a1", "skewed", 5, 12, trace_id=trace),
    ])
    status, body = await served.get(f"/api/traces/{trace}{query}")
    assert (status, body["warnings"]) == (200, ["span 00000000000000a3: outside the time of its parent 00000000000000a1"])


async def test_levels_filter(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}?levels=application,layer")
    assert status == 200
    assert [(s["name"], s["depth"]) for s in body["spans"]] == [
        ("pipeline", 0), ("conv1", 1), ("relu", 1), ("postprocess", 1)]


async def test_raw_returns_stored_rows(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}?raw=1")
    assert status == 200
    assert [(s["name"], s["depth"]) for s in body["spans"]] == [
        ("pipeline", 0), ("predict", 0), ("conv1", 0), ("relu", 0), ("postprocess", 0)]


async def test_levels_filter_read_by_the_store_keeps_whole_trace_self_times(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}?levels=layer")
    assert status == 200
    assert [(s["name"], s["depth"], s["self_ns"] / MS) for s in body["spans"]] == [("conv1", 0, 30), ("relu", 0, 30)]
    assert body["spans"][0]["attributes"] == {} and body["spans"][0]["events"][0]["name"] == "started"


async def test_max_depth_and_time_window(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}?max_depth=1")
    assert (status, [(s["name"], s["depth"]) for s in body["spans"]]) == (
        200, [("pipeline", 0), ("predict", 1), ("postprocess", 1)])
    status, body = await api.get(f"/api/traces/{TRACE}?start_ns={T0 + 60 * MS}&end_ns={T0 + 92 * MS}")
    assert (status, [(s["name"], s["depth"]) for s in body["spans"]]) == (
        200, [("pipeline", 0), ("predict", 1), ("relu", 2), ("postprocess", 1)])


async def test_compact_form(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}?format=compact&levels=application,model")
    assert status == 200
    assert [body["strings"][i] for i in body["name"]] == ["pipeline", "predict", "postprocess"]
    assert (body["parent"], body["origin_ns"], body["start_ns"]) == ([-1, 0, 0], str(T0), [0, 10 * MS, 90 * MS])


async def test_window_merges_spans_narrower_than_a_pixel(api: Served) -> None:
    status, body = await api.get(f"/api/traces/{TRACE}/window?pixels=2")  # 50 ms a pixel
    assert (status, body["resolution_ns"], body["start_ns"]) == (200, 50 * MS, T0)
    entries = [(e["depth"], e["count"], e["name"], e["total_ns"] // MS) for e in body["entries"]]
    # pipeline and predict are a pixel wide or more; conv1 and relu (30 ms each) start in the
    # first pixel at depth 2: merged; postprocess (5 ms) alone in the second pixel.
    assert entries == [(0, 1, "pipeline", 100), (1, 1, "predict", 80), (1, 1, "postprocess", 5), (2, 2, "relu", 60)]
    status, body = await api.get(f"/api/traces/{TRACE}/window?start_ns={T0 + 20 * MS}&end_ns={T0 + 30 * MS}"
                                 "&resolution_ns=1000")
    assert [e["name"] for e in body["entries"]] == ["pipeline", "predict", "conv1"]
    assert body["entries"][2]["span_id"] == "00000000000000c3"


@pytest.mark.parametrize(
    "path, status, error",
    [
        (f"/api/traces/{TRACE}?max_depth=-1", 400, "max_depth must be between 0 and 10000, not '-1'"),
        (f"/api/traces/{TRACE}?format=xml", 400, "format must be one of json, compact, not 'xml'"),
        (f"/api/traces/{TRACE}?start_ns=9&end_ns=3", 400, "end_ns must not be before start_ns"),
        (f"/api/traces/{TRACE}/window?pixels=0", 400, "pixels must be between 1 and 100000, not '0'"),
        (f"/api/traces/{TRACE}/window?start_ns=x", 400, "start_ns must be an integer, not 'x'"),
        (f"/api/traces/{TRACE}/window?start_ns={2**70}", 400,
         f"start_ns must be between 0 and {2**64 - 1}, not '{2**70}'"),
        ("/api/traces/0000000000000000000000000000cafe/window", 404, "trace 0000000000000000000000000000cafe not found"),
        ("/api/traces/0000000000000000000000000000cafe?levels=model", 404,
         "trace 0000000000000000000000000000cafe not found"),
    ],
)
async def test_trace_read_parameters_are_checked(api: Served, path: str, status: int, error: str) -> None:
    assert await api.get(path) == (status, {"error": error})


@pytest.mark.parametrize(
    "path, status, error",
    [
        ("/api/traces/0000000000000000000000000000cafe", 404, "trace 0000000000000000000000000000cafe not found"),
        ("/api/traces/xyz", 400, "trace id must be 32 hex digits, not 'xyz'"),
        (f"/api/traces/{TRACE}0", 400, f"trace id must be 32 hex digits, not '{TRACE}0'"),
        (f"/api/traces/{TRACE}?levels=model,kernel", 400,
         "unknown level 'kernel': expected one of application, model, layer, library, hardware"),
        (f"/api/traces/{TRACE}?raw=yes", 400, "raw must be 0 or 1, not 'yes'"),
        (f"/api/traces/{TRACE}/export?format=zipkin", 400, "format must be one of jaeger, perfetto, perfetto-proto, not 'zipkin'"),
        (f"/api/traces/{TRACE}/export", 400, "format must be one of jaeger, perfetto, perfetto-proto, not ''"),
        ("/api/traces/0000000000000000000000000000cafe/export?format=jaeger", 404,
         "trace 0000000000000000000000000000cafe not found"),
        ("/api/nothing", 404, "Not Found"),
    ],
)
async def test_errors_are_json_with_a_status(api: Served, path: str, status: int, error: str) -> None:
    assert await api.get(path) == (status, {"error": error})


@pytest.mark.parametrize("fmt, file_name, media_type", [
    ("jaeger", f"trace-{TRACE}.jaeger.json", "application/json"),
    ("perfetto", f"trace-{TRACE}.perfetto.json", "application/json"),
    ("perfetto-proto", f"trace-{TRACE}.pftrace", "application/x-protobuf"),
])
async def test_exports(api: Served, fmt: str, file_name: str, media_type: str) -> None:
    async with api.session.get(f"/api/traces/{TRACE}/export?format={fmt}") as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"] == f'attachment; filename="{file_name}"'
        assert response.content_type == media_type
        body = await response.read()
    # The stored trace, rendered as the pure exporter renders the same rows.
    assert body == EXPORTERS[fmt].render(build_timeline(TRACE, spans(KNOWN)), [])


# --- SQL --------------------------------------------------------------------------------------


async def test_sql_counts_the_inserted_spans(api: Served) -> None:
    status, body = await api.sql(f"SELECT count() AS n FROM spans WHERE trace_id = '{TRACE}'")
    assert (status, body) == (200, {"columns": [{"name": "n", "type": "UInt64"}], "rows": [[5]], "truncated": False})


async def test_sql_reads_attributes_by_key(api: Served) -> None:
    status, body = await api.sql(
        "SELECT name, attr_values[indexOf(attr_keys, 'mlscope.model.name')] AS model FROM spans "
        "WHERE has(attr_keys, 'mlscope.model.name') ORDER BY name")
    assert (status, body["rows"]) == (200, [["pipeline", "resnet18"], ["serve-request", "bert"]])


async def test_sql_result_is_cut_at_the_limit(api: Served) -> None:
    status, body = await api.sql(f"SELECT arrayJoin(range({SQL_MAX_ROWS * 3})) AS n")
    assert (status, len(body["rows"]), body["truncated"]) == (200, SQL_MAX_ROWS, True)
    status, body = await api.sql(f"SELECT arrayJoin(range({SQL_MAX_ROWS})) AS n")
    assert (status, len(body["rows"]), body["truncated"]) == (200, SQL_MAX_ROWS, False)


def test_embedded_sql_limits_hold_after_a_trailing_comment(tmp_path) -> None:
    # Only the embedded backend appends its SETTINGS clause to the statement's text (the server
    # backend sends settings beside the query): a trailing comment must not swallow it, or the
    # limits and readonly would silently be off.
    # getSetting is refused to users, so the settings are read by a statement run directly.
    statement = "SELECT getSetting('readonly') AS ro, getSetting('max_result_rows') AS r"
    assert check_query("SELECT 1 AS one -- c") == "SELECT 1 AS one"
    store = open_store(f"embedded://{tmp_path / 'store'}")
    try:
        capped = store.read_untrusted(statement, limit_settings(SqlLimits(max_rows=7)), OutputCap(7, 2**20))
    finally:
        store.close()
    assert capped.result.rows == [(1, 8)]


async def test_sql_non_finite_floats_are_null(api: Served) -> None:
    assert (await api.sql("SELECT 0 / 0 AS a, 1 / 0 AS b"))[1]["rows"] == [[None, None]]


@pytest.mark.parametrize(
    "query, reason",
    [
        ("INSERT INTO span_rows (trace_id) VALUES ('x')", "not INSERT"),
        ("DROP TABLE spans", "not DROP"),
        ("SELECT 1; DROP TABLE span_rows", "only one statement is allowed"),
        ("SELECT * FROM file('/etc/hostname', 'LineAsString')", "function file() is not allowed"),
        ("SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'x String')", "function url() is not allowed"),
        ("SELECT * FROM spans SETTINGS readonly = 0", "SETTINGS is not allowed"),
        ("SELECT * FROM system.tables", "system database is not readable"),
    ],
)
async def test_sql_refuses_and_changes_nothing(api: Served, query: str, reason: str) -> None:
    tables_before = api.store.execute("SHOW TABLES").rows
    status, body = await api.sql(query)
    assert status == 400 and reason in body["error"], body
    assert api.store.execute("SELECT count() FROM span_rows").rows == [(len(KNOWN + OTHER + STRAY),)]
    assert api.store.execute("SHOW TABLES").rows == tables_before


@pytest.mark.parametrize(
    "body, error",
    [
        (b"{not json", "the body must be JSON"),
        (b'{"sql": "SELECT 1"}', 'the body must be {"query": "<SQL>"}'),
        (b'{"query": 1}', 'the body must be {"query": "<SQL>"}'),
        (b'["SELECT 1"]', 'the body must be {"query": "<SQL>"}'),
    ],
)
async def test_sql_bad_bodies(api: Served, body: bytes, error: str) -> None:
    async with api.session.post("/api/sql", data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert error in (await response.json())["error"]


async def test_sql_body_size_and_method(api: Served) -> None:
    async with api.session.post("/api/sql", json={"query": "SELECT 1 -- " + "x" * 2**20}) as response:
        assert (response.status, await response.json()) == (413, {"error": "Request Entity Too Large"})
    assert await api.get("/api/sql") == (405, {"error": "Method Not Allowed"})


async def test_sql_failing_query_is_a_400_with_the_engine_reason(api: Served) -> None:
    status, body = await api.sql("SELECT no_such_column FROM spans")
    assert status == 400
    assert body["error"].startswith("the query failed:") and "no_such_column" in body["error"]


async def test_every_table_function_of_the_engine_is_classified(store: Store) -> None:
    # A new engine version adds table functions: each must be known harmless or refused.
    names = [name for (name,) in store.execute("SELECT name FROM system.table_functions").rows]
    assert names
    assert [n for n in names if n.lower() not in SAFE_TABLE_FUNCTIONS and not is_refused_function(n)] == []


# --- a store that is down ---------------------------------------------------------------------


async def test_store_down_is_503(tmp_path) -> None:
    # A real server that goes away under an opened store (a second one: the shared server stays up).
    server = clickhouse_local_server.start(str(tmp_path / "ch"))
    store = open_store(server.url)
    server.stop()
    runner, base_url = await serve(create_query_app(store))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            async with session.get("/readyz") as response:
                assert response.status == 503
                body = await response.json()
                assert (body["status"], body["store"]) == ("unavailable", store.url)
                assert body["error"].startswith("store unavailable: clickhouse server unreachable")
            async with session.get("/api/traces") as response:
                assert response.status == 503
                assert (await response.json())["error"].startswith("clickhouse server unreachable")
    finally:
        await runner.cleanup()
        store.close()


async def test_a_failing_spool_replay_is_503(store: Store) -> None:
    status = {"pending_spans": 0, "spooled_bytes": 2048, "store_ok": True, "replay_error": "OSError: [Errno 24] Too many open files"}
    runner, base_url = await serve(create_query_app(store, lambda: status))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            async with session.get("/readyz") as response:
                body = await response.json()
                assert (response.status, body["status"], body["collector"]) == (503, "unavailable", status)
                assert body["error"] == "spool replay failing: OSError: [Errno 24] Too many open files"
            status["replay_error"] = ""
            async with session.get("/readyz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
