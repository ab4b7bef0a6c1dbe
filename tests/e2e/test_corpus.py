"""The corpus (tests/programs/): small programs shaped like the ones users have, none with
mlscope in it, each run under `mlscope run` at every level against one served embedded store.
Each run must finish within its time limit with the stdout and exit code of the untraced run,
give one trace, its processes named for what they are under the main process span, and store
the expected spans per level; the tight loop may drop deep spans, but what it stores plus the
drops recorded on its process span (and in `mlscope run`'s last line) is what it produced."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest

from mlscope.conventions import LEVELS, PROCESS_PID, level_rank

from tests.e2e.served_process import REPO, Served, start_mlscope

RUN_LIMIT_S = 90
"""One traced run, on a loaded 2-core machine; untraced, the slowest (spawned workers) take ~6 s."""
DROPPED_PREFIX = "mlscope.dropped."
SETTLE_S = 5
"""How long spans a process exported before its process span may take to be stored after it."""
LAST_LINE = re.compile(r"^mlscope: trace ([0-9a-f]{32})(?: is incomplete: \d+ spans not delivered \(([^)]*)\))?$",
                       re.MULTILINE)


@dataclass(frozen=True)
class CorpusProgram:
    script: str
    args: tuple[str, ...]
    processes: tuple[str, ...]
    """The process spans' names, the main process's first (the others are its children)."""
    spans: Mapping[str, int]
    """Spans produced per level at the deepest level (library); a level shallower traces those above it."""
    may_drop: bool = False
    """Whether the program outruns the collector: its drops are then recorded, not refused."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, f"tests/programs/{self.script}.py", *self.args]

    def expected(self, level: str) -> dict[str, int]:
        return {span_level: count for span_level, count in self.spans.items()
                if level_rank(span_level) <= level_rank(level)}


SPAWN_TRACKER = "multiprocessing.resource_tracker"  # spawn starts it; it outlives the program
# Span counts as torch 2.13 (pyproject's pin) runs these programs on CPU: layer spans are module
# calls; library spans are aten ops (forward, and for training backward, loss and optimizer too).
CORPUS = {
    "inference": CorpusProgram("inference", (), ("inference.py",),
                               {"application": 1, "model": 3, "layer": 3 * 5, "library": 12}),
    "training-fork": CorpusProgram(
        "training", (), ("training.py", "DataLoader worker 0", "DataLoader worker 1"),
        # 4 steps: data, zero_grad, forward, loss, backward, step; the iterator's end is a 5th data.
        {"application": 3, "model": 5 * 4 + 5, "layer": 4 * 4, "library": 77}),
    "training-spawn": CorpusProgram(
        "training", ("--spawn",), ("training.py", "DataLoader worker 0", "DataLoader worker 1", SPAWN_TRACKER),
        {"application": 4, "model": 5 * 4 + 5, "layer": 4 * 4, "library": 77}),
    "threads": CorpusProgram("threads", (), ("threads.py",),
                             {"application": 1, "model": 10, "layer": 10 * 4, "library": 10 * 3}),
    "pool-fork": CorpusProgram("pool", (), ("pool.py", "ForkPoolWorker-1", "ForkPoolWorker-2"),
                               {"application": 3, "model": 4, "layer": 4 * 4, "library": 4 * 3}),
    "pool-spawn": CorpusProgram("pool", ("--spawn",), ("pool.py", "SpawnPoolWorker-1", "SpawnPoolWorker-2", SPAWN_TRACKER),
                                {"application": 4, "model": 4, "layer": 4 * 4, "library": 4 * 3}),
    # A compiled model is one layer; its ops are the compiled region's and those around it.
    "compiled": CorpusProgram("compiled", (), ("compiled.py",),
                              {"application": 1, "model": 3, "layer": 3, "library": 18}),
    # Export calls the model twice (tracing); ORT's 3 runs have node (layer) and kernel spans.
    "onnx-export": CorpusProgram("onnx_export", (), ("onnx_export.py",),
                                 {"application": 1, "model": 2 + 3, "layer": 15, "library": 12}),
    "tight-loop": CorpusProgram("tight_loop", (), ("tight_loop.py",),
                                {"application": 1, "model": 3000, "layer": 3000 * 4, "library": 3000 * 3},
                                may_drop=True),
}


def cases() -> Iterator[object]:
    for name, program in CORPUS.items():
        for level in LEVELS:
            yield pytest.param(name, level, id=f"{name}-{level}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("corpus")
    process, ports = start_mlscope(
        ["serve", "--store", f"embedded://{data / 'store'}", "--port", "0", "--otlp-http-port", "0",
         "--otlp-grpc-port", "0"],
        data, ("otlp-http", "otlp-grpc", "http"),
    )
    yield Served(process, ports)
    process.terminate()
    process.wait(timeout=30)


@functools.cache
def untraced(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(CORPUS[name].command, capture_output=True, text=True, timeout=RUN_LIMIT_S, cwd=REPO)


def traced(served: Served, program: CorpusProgram, level: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}",
         "--level", level, "--", *program.command],
        capture_output=True, text=True, timeout=RUN_LIMIT_S, cwd=REPO,
    )
    return result, time.monotonic() - started


def stored_spans(served: Served, trace_id: str, expected: Mapping[str, int]) -> list[dict]:
    """The trace once it holds `expected` spans per level (processes export apart, deep spans
    after their calls), or what it holds SETTLE_S after all its process spans are stored (each
    is exported after its process's other spans), or at the deadline."""
    deadline, settled = time.monotonic() + 60, float("inf")
    while True:
        try:
            spans = served.get_json(f"/api/traces/{trace_id}")["spans"]
        except OSError:  # 404 until the first span is stored
            spans = []
        stored = Counter(span["level"] for span in spans)
        if all(stored[level] >= count for level, count in expected.items()) or time.monotonic() > min(deadline, settled):
            return spans
        if stored["application"] >= expected["application"]:
            settled = min(settled, time.monotonic() + SETTLE_S)
        time.sleep(0.3)


def traces_since(served: Served, since_ns: int) -> list[str]:
    return [listed["trace_id"] for listed in served.get_json(f"/api/traces?since_ns={since_ns}")["traces"]]


@pytest.mark.parametrize("name, level", list(cases()))
def test_a_corpus_program_traced_at_a_level(served: Served, name: str, level: str) -> None:
    program = CORPUS[name]
    plain = untraced(name)
    assert plain.returncode == 0, plain.stderr
    started_ns = time.time_ns()
    result, elapsed = traced(served, program, level)
    assert (result.returncode, result.stdout) == (plain.returncode, plain.stdout), result.stderr
    assert elapsed < RUN_LIMIT_S
    (last,) = LAST_LINE.findall(result.stderr)  # one trace for the run, however many processes
    trace_id, undelivered = last
    reported = {level: int(count) for level, count in (pair.split() for pair in undelivered.split(", ") if pair)}
    assert program.may_drop or not reported, result.stderr

    expected = program.expected(level)
    spans = stored_spans(served, trace_id, {span_level: count - reported.get(span_level, 0)
                                            for span_level, count in expected.items()})
    processes = [span for span in spans if span["level"] == "application"]
    (main,) = [span for span in processes if span["parent_span_id"] == ""]
    assert main["name"] == program.processes[0]
    assert Counter(span["name"] for span in processes) == Counter(program.processes)
    assert all(span["parent_span_id"] == main["span_id"] for span in processes if span is not main)
    assert len({span["attributes"][PROCESS_PID] for span in processes}) == len(program.processes)

    recorded = Counter()
    for process in processes:
        recorded.update({key.removeprefix(DROPPED_PREFIX): int(value) for key, value in process["attributes"].items()
                         if key.startswith(DROPPED_PREFIX)})
    assert recorded == reported
    stored = Counter(span["level"] for span in spans)
    assert {span_level: stored[span_level] + recorded[span_level] for span_level in expected} == expected
    assert not set(stored) - set(expected)
    assert traces_since(served, started_ns) == [trace_id]
