"""`mlscope run --leveled` against a real `mlscope serve`: one trace holding a pass per level
under the `mlscope.leveled` root, whose attributes carry each pass's figures (readable in SQL)."""

from __future__ import annotations

import re
import subprocess
import sys

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from mlscope.agents.api import choose_writer
from tests.e2e.served_process import Served
from tests.e2e.test_run import mlscope_run
from tests.e2e.test_serve import wait_for_trace

PROGRAM = "tests/e2e/plain_onnx_program.py"
RUNS, NODES = 3, 4
PASSES = ("model", "layer", "library", "hardware")


def test_one_trace_with_a_pass_per_level_and_their_overheads(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--leveled", "--", sys.executable, PROGRAM, "--runs", str(RUNS))
    assert result.returncode == 0, result.stderr
    table = re.findall(r"^(model|layer|library|hardware) +(\d+) +([\d.]+) +([+-][\d.]+)% +(\w+)$", result.stderr,
                       re.MULTILINE)
    assert [(row[0], row[1]) for row in table] == [(level, str(RUNS)) for level in PASSES], result.stderr
    # Each pass measured the deep-span writer a plain start_agent uses at its level on this machine.
    writers = {level: choose_writer(level, RandomIdGenerator()).value for level in PASSES}
    assert {row[0]: row[4] for row in table} == writers
    run_id = re.search(r"^mlscope: leveled run ([0-9a-f]{32})$", result.stderr, re.MULTILINE).group(1)
    # The root, four process spans, each pass's runs, their nodes (layer on) and kernels (library on).
    spans = wait_for_trace(served, trace_id, 1 + 4 + RUNS * (1 + (1 + NODES) + 2 * (1 + 2 * NODES)))["spans"]
    root = spans[0]
    assert (root["name"], root["parent_span_id"]) == ("mlscope.leveled", "")
    attributes = root["attributes"]
    assert attributes["mlscope.leveled.run_id"] == run_id
    assert attributes["mlscope.leveled.passes"] == ",".join(PASSES)
    passes = [span for span in spans if span["parent_span_id"] == root["span_id"]]
    assert [(span["name"], span["attributes"]["mlscope.leveled.pass"]) for span in passes] == [
        ("plain_onnx_program.py", level) for level in PASSES]
    levels_below = {}
    for process in passes:
        below = {process["span_id"]}
        for span in spans:  # pre-order: a parent comes before its children
            if span["parent_span_id"] in below:
                below.add(span["span_id"])
                levels_below.setdefault(process["attributes"]["mlscope.leveled.pass"], set()).add(span["level"])
    assert levels_below == {"model": {"model"}, "layer": {"model", "layer"},
                            "library": {"model", "layer", "library"}, "hardware": {"model", "layer", "library"}}
    for level in PASSES:
        assert int(attributes[f"mlscope.leveled.{level}.model_spans"]) == RUNS
        assert int(attributes[f"mlscope.leveled.{level}.model_p50_ns"]) > 0
        assert float(attributes[f"mlscope.leveled.{level}.overhead"]) > -1
        assert attributes[f"mlscope.leveled.{level}.writer"] == writers[level]
    assert float(attributes["mlscope.leveled.model.overhead"]) == 0.0
    assert int(attributes["mlscope.leveled.layer.level_spans"]) == RUNS * NODES
    assert int(attributes["mlscope.leveled.library.level_spans"]) == RUNS * NODES
    status, answer = served.post_json("/api/sql", {"query": (
        "SELECT toFloat64(attr_values[indexOf(attr_keys, 'mlscope.leveled.library.overhead')]) FROM spans "
        f"WHERE name = 'mlscope.leveled' AND trace_id = '{trace_id}'")})
    assert status == 200 and answer["rows"] == [[float(attributes["mlscope.leveled.library.overhead"])]]


def test_the_first_failing_pass_stops_the_run_with_its_exit_code(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--leveled", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert result.returncode == 3
    assert "pass model" in result.stderr and "pass layer" not in result.stderr
    root, process = wait_for_trace(served, trace_id, 2)["spans"]
    assert root["status"] == {"code": "error", "message": "pass model exited with code 3"}
    assert (process["parent_span_id"], process["attributes"]["process.exit.code"]) == (root["span_id"], "3")


def test_leveled_and_level_are_mutually_exclusive() -> None:
    result = subprocess.run([sys.executable, "-m", "mlscope", "run", "--leveled", "--level", "layer", "--", "true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "mutually exclusive" in result.stderr
