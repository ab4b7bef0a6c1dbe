"""`mlscope evaluate` end to end, as the issue's "done when" says: a real `mlscope serve`, the
ResNet-18 manifest in PyTorch and ONNX Runtime at batch sizes 1 and 8; rows reach the store
through the collector, GET /api/evaluations returns them, a table is printed and a figure
written. A bad manifest exits 2 with one line and stores nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


from tests.e2e.served_process import REPO, Served

EXPECTED_ROWS = 2 * 2 * 2  # frameworks x batch sizes x scenarios


def evaluate(served: Served, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlscope", "evaluate", *args, "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "MLSCOPE_DATA": str(tmp_path / "data"), "HOME": str(tmp_path)},
    )


def span_count(served: Served) -> int:
    status, answer = served.post_json("/api/sql", {"query": "SELECT count() FROM spans"})
    assert status == 200, answer
    return answer["rows"][0][0]


def test_evaluate_stores_rows_prints_a_table_and_draws(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "manifests" / "resnet18.yaml").read_text().replace("name: pytorch", "name: caffe"))
    refused = evaluate(served, tmp_path, str(bad), "--framework", "pytorch")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"mlscope: {bad}: framework.name: unknown name 'caffe' (expected one of pytorch, onnxruntime)"]

    figure = tmp_path / "fig3.png"
    done = evaluate(served, tmp_path, "manifests/resnet18.yaml", "--framework", "pytorch,onnxruntime",
                    "--batch-size", "1,8", "--scenario", "single-stream,server", "--repetitions", "3",
                    "--warmup", "1", "--figure", str(figure))
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].split()[:5] == ["model", "framework", "provider", "batch", "scenario"]
    assert len(table) == 2 + EXPECTED_ROWS
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"[{EXPECTED_ROWS}/{EXPECTED_ROWS}] resnet18 onnxruntime batch 8 server" in done.stderr

    deadline = time.monotonic() + 30
    while len(rows := served.get_json("/api/evaluations?model=resnet18")["evaluations"]) < EXPECTED_ROWS:
        assert time.monotonic() < deadline, f"only {len(rows)} rows stored"
        time.sleep(0.2)
    assert len(rows) == EXPECTED_ROWS
    assert {(r["framework"], r["batch_size"], r["scenario"]) for r in rows} == {
        (f, b, s) for f in ("pytorch", "onnxruntime") for b in (1, 8) for s in ("single-stream", "server")}
    assert len({r["trace_id"] for r in rows}) == 1 and len({r["system"] for r in rows}) == 1
    for row in rows:
        assert 0 < row["latency_p50_ns"] <= row["latency_p90_ns"] <= row["latency_p99_ns"]
        assert row["queries"] == 3 and row["samples"] == 3 * row["batch_size"] and row["level"] == "model"
        assert (row["server_qps"] is not None) == (row["scenario"] == "server")
    onnx = [r for r in rows if r["framework"] == "onnxruntime"]
    assert all(r["divergence_reference"] == "pytorch" and r["divergence_top1_agreement"] == 1.0
               and r["divergence_max_abs_diff"] < 1e-3 for r in onnx)
    assert served.get_json("/api/evaluations?model=resnet18&framework=pytorch&batch_size=8")["evaluations"] == [
        r for r in rows if (r["framework"], r["batch_size"]) == ("pytorch", 8)]

    # The run's trace holds each configuration's predict spans under its evaluation span.
    trace = served.get_json(f"/api/traces/{rows[0]['trace_id']}")["spans"]
    names = [span["name"] for span in trace]
    assert names.count("mlscope.evaluation") == EXPECTED_ROWS and names.count("load") == 2
    assert names.count("predict") >= EXPECTED_ROWS * 3

    report = subprocess.run([sys.executable, "-m", "mlscope", "report", "--model", "resnet18", "--url",
                             served.url(""), "--out", str(tmp_path / "fig.svg"), "--baseline", rows[0]["system"]],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert report.returncode == 0, report.stderr
    assert len(report.stdout.splitlines()) == 2 + EXPECTED_ROWS
    assert (tmp_path / "fig.svg").read_text().lstrip().startswith("<?xml")


def test_bad_manifest_stores_nothing(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "nochecksum.yaml"
    bad.write_text((REPO / "manifests" / "resnet18.yaml").read_text().replace(
        "  builder: mlscope.manifests.models:resnet18", "  url: https://example.com/resnet18.onnx\n  format: onnx"))
    refused = evaluate(served, tmp_path, str(bad))
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"mlscope: {bad}: model.sha256: missing required field"
    time.sleep(1)  # what a run would have sent would have been exported by now
    assert span_count(served) == 0
    assert served.get_json("/api/evaluations")["evaluations"] == []
