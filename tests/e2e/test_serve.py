"""End to end with clients that are not mlscope code: an unmodified OTel SDK program (HTTP, then
gRPC) and curl with a hand-written OTLP/JSON body, read back through the HTTP API."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mlscope.store import open_store

from tests.e2e.served_process import REPO, Served, start_mlscope


def wait_for_trace(served: Served, trace_id: str, spans: int) -> dict:
    deadline = time.monotonic() + 20
    while True:
        try:
            trace = served.get_json(f"/api/traces/{trace_id}")
            if len(trace["spans"]) >= spans:
                return trace
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} never reached {spans} spans")
        time.sleep(0.1)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unmodified_otel_program_gets_its_trace_back(served: Served, protocol: str) -> None:
    port = served.ports["otlp-http" if protocol == "http" else "otlp-grpc"]
    endpoint = f"http://127.0.0.1:{port}" if protocol == "http" else f"127.0.0.1:{port}"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "otel_three_levels.py"), protocol, endpoint],
        capture_output=True, text=True, timeout=60, check=True,
    )
    trace_id = result.stdout.strip()
    trace = wait_for_trace(served, trace_id, 4)
    assert trace["trace_id"] == trace_id
    shape = [(s["name"], s["depth"], s["level"]) for s in trace["spans"]]
    assert shape == [("request", 0, "application"), ("model", 1, "model"),
                     ("layer-a", 2, "layer"), ("layer-b", 2, "layer")]
    by_name = {s["name"]: s for s in trace["spans"]}
    assert by_name["request"]["parent_span_id"] == ""
    assert by_name["model"]["parent_span_id"] == by_name["request"]["span_id"]
    assert by_name["layer-b"]["parent_span_id"] == by_name["model"]["span_id"]
    assert all(s["service"] == f"plain-otel-{protocol}" for s in trace["spans"])
    listed = served.get_json("/api/traces")["traces"]
    assert [t["span_count"] for t in listed if t["trace_id"] == trace_id] == [4]


def test_curl_with_a_hand_written_otlp_json_body(served: Served) -> None:
    trace_id = "5b8efff798038103d269b633813fc60c"
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "curl-client"}}]},
        "scopeSpans": [{"scope": {"name": "by-hand"}, "spans": [
            {"traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "root", "kind": 1,
             "startTimeUnixNano": "1764000000000000000", "endTimeUnixNano": "1764000001000000000"},
            {"traceId": trace_id, "spanId": "eee19b7ec3c1b173", "parentSpanId": "eee19b7ec3c1b174",
             "name": "child", "startTimeUnixNano": "1764000000100000000",
             "endTimeUnixNano": "1764000000600000000",
             "attributes": [{"key": "mlscope.level", "value": {"stringValue": "model"}}]},
        ]}]}]}
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
         "--data-binary", json.dumps(body), f"http://127.0.0.1:{served.ports['otlp-http']}/v1/traces"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout == "200"
    trace = wait_for_trace(served, trace_id, 2)
    root, child = trace["spans"]
    assert (root["name"], root["depth"], root["duration_ns"]) == ("root", 0, 1_000_000_000)
    assert (child["name"], child["depth"], child["level"]) == ("child", 1, "model")
    assert root["self_ns"] == 500_000_000
    status, result = served.post_json(
        "/api/sql", {"query": f"SELECT count() FROM spans WHERE trace_id = '{trace_id}'"})
    assert (status, result["rows"]) == (200, [[2]])


def test_demo_traces_a_real_pipeline_and_prints_its_timeline(tmp_path) -> None:
    store_dir = tmp_path / "store"
    process, ports = start_mlscope(["demo", "--store", f"embedded://{store_dir}", "--port", "0", "--exit"],
                                   tmp_path, ("http",))
    output, errors = process.communicate(timeout=180)
    assert process.returncode == 0, errors
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    assert lines["timeline"].startswith(f"http://127.0.0.1:{ports['http']}/traces/")
    trace_id = lines["trace"].split()[0]
    store = open_store(f"embedded://{store_dir}")
    try:
        per_level = dict(store.execute(
            f"SELECT level, count() FROM spans WHERE trace_id = '{trace_id}' GROUP BY level").rows)
    finally:
        store.close()
    assert lines["trace"] == f"{trace_id} ({sum(per_level.values())} spans)"
    # demo-pipeline and 3 x batch; load-model and 3 x (preprocess, predict, postprocess);
    # per predict, the model and its 10 modules; and the aten ops the layers call.
    assert per_level["application"] == 4
    assert per_level["model"] == 10
    assert per_level["layer"] == 3 * 11
    assert per_level["library"] >= 3 * 10


@pytest.mark.parametrize(
    "args, reason",
    [(["serve", "--store", "mysql://x/y"], "bad store URL"),
     (["serve", "--port", "70000"], "port out of range"),
     (["serve", "--store", "embedded://relative"], "bad store URL")],
)
def test_bad_usage_exits_2_with_one_line(tmp_path, args: list[str], reason: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mlscope", *args], capture_output=True, text=True,
                            timeout=60, env={"MLSCOPE_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert reason in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlscope", *args], capture_output=True, text=True, timeout=60)


def test_sql_command_against_a_running_service_and_a_store(served: Served, tmp_path) -> None:
    base = served.url("")
    table = run_cli("sql", "--url", base, "SELECT 1 AS one, 'a,b' AS text")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == ["one  text", "---  ----", "1    a,b"]
    csv_out = run_cli("sql", "--url", base, "--format", "csv", "SELECT 1 AS one, 'a,b' AS text")
    assert csv_out.stdout == 'one,text\n1,"a,b"\n'
    refused = run_cli("sql", "--url", base, "DROP TABLE span_rows")
    assert refused.returncode == 2 and "mlscope:" in refused.stderr
    # The embedded store is owned by `serve`: opening it directly says so in one line.
    locked = run_cli("sql", "--store", f"embedded://{tmp_path / 'store'}", "SELECT 1")
    assert locked.returncode == 1
    assert "one process owns an embedded store" in locked.stderr


def test_sql_command_on_a_store_applies_the_guard(tmp_path) -> None:
    store = f"embedded://{tmp_path / 'own-store'}"
    ok = run_cli("sql", "--store", store, "--format", "json", "SELECT count() AS spans FROM spans")
    assert json.loads(ok.stdout) == {"columns": [{"name": "spans", "type": "UInt64"}], "rows": [[0]]}
    refused = run_cli("sql", "--store", store, "SELECT * FROM file('/etc/passwd', 'LineAsString')")
    assert refused.returncode == 2 and "file()" in refused.stderr


def test_serve_mounts_dispatch_and_query_can_leave_it_out(served: Served, tmp_path) -> None:
    assert served.get_json("/api/predictors") == {"predictors": []}
    document = served.get_json("/openapi.json")
    assert {"/api/conventions", "/api/traces", "/api/predictors", "/api/jobs/{job_id}/state"} <= set(document["paths"])
    process, ports = start_mlscope(
        ["query", "--store", f"embedded://{tmp_path / 'reader'}", "--port", "0", "--no-dispatch"], tmp_path, ("http",))
    reader = Served(process, ports)
    try:
        assert reader.get_json("/api/traces") == {"traces": [], "next_cursor": None}
        assert reader.post_json("/api/jobs", {})[0] == 404
        assert "/api/jobs" not in reader.get_json("/openapi.json")["paths"]
    finally:
        process.terminate()
        process.wait(timeout=30)
