"""`mlscope run` on unmodified programs, and a two-process HTTP example, against a real
`mlscope serve`: what reaches the store, read back through GET /api/traces/{id}."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.e2e.served_process import REPO, Served
from tests.e2e.test_serve import wait_for_trace

TRACEPARENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT_SPAN_ID = "b7ad6b7169203331"


def mlscope_run(served: Served, *args: str, env: dict[str, str] | None = None,
                timeout: float = 120) -> tuple[subprocess.CompletedProcess, str]:
    """Runs `mlscope run` to the collector; returns the result and the trace id it reported."""
    result = subprocess.run(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})},
    )
    reported = re.search(r"^mlscope: trace ([0-9a-f]{32})$", result.stderr, re.MULTILINE)
    assert reported, result.stderr
    return result, reported.group(1)


def test_an_unmodified_torch_program_traced_down_to_library_level(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--level", "library", "--service", "plain", "--",
                                   sys.executable, "examples/plain_torch.py", "--batches", "2")
    assert result.returncode == 0, result.stderr
    spans = wait_for_trace(served, trace_id, 2 + 2 * 9)["spans"]
    root = spans[0]
    assert (root["name"], root["level"], root["depth"], root["parent_span_id"]) == ("plain_torch.py", "application", 0, "")
    assert root["attributes"]["process.pid"] and "examples/plain_torch.py" in root["attributes"]["process.command_line"]
    assert root["status"]["code"] != "error"
    # Only the top-level module call is a model span; its submodules are layers below it.
    models = [span for span in spans if span["level"] == "model"]
    assert [(span["name"], span["depth"], span["attributes"]["mlscope.model.name"]) for span in models] == [
        ("forward", 1, "TinyCNN")] * 2
    layers = [span for span in spans if span["level"] == "layer"]
    assert {span["name"] for span in layers if span["depth"] == 2} == {"TinyCNN"}
    assert {"features", "features.0", "classifier"} <= {span["name"] for span in layers}
    library = [span for span in spans if span["level"] == "library"]
    assert "aten::conv2d" in {span["name"] for span in library}
    assert min(span["depth"] for span in library) >= 3
    assert {span["service"] for span in spans} == {"plain"}


def test_exit_code_error_status_traceparent_and_subprocesses(served: Served) -> None:
    # The program starts a Python subprocess (which inherits the bootstrap) and exits with 3.
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'], check=True); sys.exit(3)"
    traceparent = f"00-{TRACEPARENT_TRACE_ID}-{TRACEPARENT_SPAN_ID}-01"
    result, trace_id = mlscope_run(served, "--", sys.executable, "-c", code, env={"TRACEPARENT": traceparent})
    assert result.returncode == 3
    assert trace_id == TRACEPARENT_TRACE_ID
    spans = wait_for_trace(served, trace_id, 2)["spans"]
    by_pid = {span["attributes"]["process.pid"]: span for span in spans}
    assert len(by_pid) == 2
    parent = next(span for span in spans if span["parent_span_id"] == TRACEPARENT_SPAN_ID)
    child = next(span for span in spans if span is not parent)
    assert child["parent_span_id"] == parent["span_id"]
    assert (parent["status"]["code"], parent["attributes"]["process.exit.code"]) == ("error", "3")
    assert child["status"]["code"] != "error"


def test_an_uncaught_exception_fails_the_process_span(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--", sys.executable, "-c", "raise ValueError('bad input')")
    assert result.returncode == 1 and "ValueError: bad input" in result.stderr
    (root,) = wait_for_trace(served, trace_id, 1)["spans"]
    assert root["status"]["code"] == "error"
    assert any(event["name"] == "exception" for event in root["events"])


def test_sigterm_is_forwarded_and_the_process_span_still_arrives(served: Served) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}",
         "--service", "sigterm", "--", sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert process.stdout.readline() == "up\n"  # the bootstrap has run: the program has started
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    trace_id = re.search(r"mlscope: trace ([0-9a-f]{32})", errors).group(1)
    (root,) = wait_for_trace(served, trace_id, 1)["spans"]
    assert root["status"] == {"code": "error", "message": "terminated by SIGTERM"}
    assert (root["attributes"]["process.exit.code"], root["attributes"]["mlscope.process.signal"]) == ("143", "SIGTERM")


def test_two_processes_over_http_give_one_trace(served: Served) -> None:
    result = subprocess.run(
        [sys.executable, "examples/http_two_process.py", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}",
         "--requests", "2"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=True,
    )
    trace_id = result.stdout.strip()
    spans = wait_for_trace(served, trace_id, 2 * (2 + 2 + 11) + 1)["spans"]
    assert {span["service"] for span in spans} == {"model-client", "model-server"}
    by_id = {span["span_id"]: span for span in spans}
    handled = [span for span in spans if span["service"] == "model-server" and span["name"] == "POST /predict"]
    assert len(handled) == 2
    for server_span in handled:
        request = by_id[server_span["parent_span_id"]]
        assert (request["service"], request["name"]) == ("model-client", "POST /predict")
    predicts = [span for span in spans if span["name"] == "predict"]
    assert len(predicts) == 2 and all(by_id[p["parent_span_id"]] in handled for p in predicts)


@pytest.mark.parametrize("args, reason", [([], "no command given"), (["--"], "no command given"),
                                          (["--", "no-such-command-here"], "cannot start")])
def test_bad_usage_exits_2_with_one_line(args: list[str], reason: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mlscope", "run", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and reason in result.stderr
