"""`mlscope run` on a program that calls its model from threads, and on a tight loop that outruns
the collector: one trace, every call under the process span, and every span either stored or
counted as dropped (on the process span and in the last line), per level."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.served_process import REPO, Served
from tests.e2e.test_run import mlscope_run
from tests.e2e.test_serve import wait_for_trace

THREADS_PROGRAM = """
import threading, torch
model = torch.nn.Sequential(torch.nn.Linear(4, 4))
def work():
    for _ in range(5):
        model(torch.ones(1, 4))
threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(2)]
for thread in threads: thread.start()
for thread in threads: thread.join()
"""

TIGHT_LOOP_CALLS = 3000
TIGHT_LOOP_PROGRAM = f"""
import torch
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
with torch.inference_mode():
    for _ in range({TIGHT_LOOP_CALLS}):
        model(torch.ones(1, 8))
"""


def test_model_calls_from_two_threads_join_the_process_span_with_their_thread(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--level", "model", "--", sys.executable, "-c", THREADS_PROGRAM)
    assert result.returncode == 0, result.stderr
    spans = wait_for_trace(served, trace_id, 11)["spans"]
    process = spans[0]
    forwards = [span for span in spans if span["name"] == "forward"]
    assert len(forwards) == 10 and {span["parent_span_id"] for span in forwards} == {process["span_id"]}
    assert sorted(span["attributes"]["thread.name"] for span in forwards) == ["worker-0"] * 5 + ["worker-1"] * 5
    assert len({span["attributes"]["thread.id"] for span in forwards}) == 2
    recent = served.get_json("/api/traces?limit=20")["traces"]
    assert [trace["trace_id"] for trace in recent] == [trace_id]  # no one-span traces beside it


def test_a_tight_loop_stores_or_counts_every_span_per_level(served: Served) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}",
         "--level", "library", "--", sys.executable, "-c", TIGHT_LOOP_PROGRAM],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    last = re.search(r"^mlscope: trace ([0-9a-f]{32})(?: is incomplete: \d+ spans not delivered \(([^)]*)\))?",
                     result.stderr, re.MULTILINE)
    assert last, result.stderr
    trace_id = last.group(1)
    reported = {level: int(count) for level, count in (pair.split() for pair in (last.group(2) or "").split(", ") if pair)}
    produced = {"model": TIGHT_LOOP_CALLS, "layer": 4 * TIGHT_LOOP_CALLS, "library": 3 * TIGHT_LOOP_CALLS}
    spans = wait_for_trace(served, trace_id, 1 + sum(produced.values()) - sum(reported.values()))["spans"]
    stored = {level: sum(1 for span in spans if span["level"] == level) for level in produced}
    on_process = {key.rsplit(".", 1)[1]: int(value) for key, value in spans[0]["attributes"].items()
                  if key.startswith("mlscope.dropped.")}
    assert on_process == reported
    assert {level: stored[level] + reported.get(level, 0) for level in produced} == produced
