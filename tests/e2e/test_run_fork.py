"""`mlscope run` on programs that fork, end by a signal, or find no collector (issue 10): they
finish, their forked workers are their own process spans in the run's trace, and the process
span records the exit code and signal as the shell sees them."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.served_process import REPO, Served
from tests.e2e.test_run import mlscope_run
from tests.e2e.test_serve import wait_for_trace

PROGRAM = "tests/e2e/fork_pool_program.py"
CALLS = 6  # fork_pool_program.CALLS
CHILDREN = 5  # fork_sigterm_program.CHILDREN


def fork_pool_spans(served: Served, trace_id: str) -> list[dict]:
    """The trace once its 3 process spans and CALLS model spans are stored (the deep spans
    arrive apart from them: wait_for_trace's count alone is not enough)."""
    deadline = time.monotonic() + 20
    while True:
        spans = wait_for_trace(served, trace_id, 3 + CALLS)["spans"]
        levels = [span["level"] for span in spans]
        if (levels.count("application"), levels.count("model")) >= (3, CALLS) or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def check_fork_pool_trace(served: Served, trace_id: str, terminated: str | None) -> None:
    spans = fork_pool_spans(served, trace_id)
    processes = [span for span in spans if span["level"] == "application"]
    (root,) = [span for span in processes if span["parent_span_id"] == ""]
    workers = [span for span in processes if span is not root]
    assert all(worker["parent_span_id"] == root["span_id"] for worker in workers)
    assert len(workers) == 2
    assert len({span["attributes"]["process.pid"] for span in processes}) == 3
    for worker in workers:
        # terminate() SIGTERMs a worker unless the worker already took its stop sentinel
        # (its clean-up then finishes, bounded, before the signal ends it): both happen.
        signalled = worker["attributes"].get("mlscope.process.signal")
        assert signalled in ({terminated, None} if terminated else {None})
        assert worker["attributes"]["process.exit.code"] == ("143" if signalled else "0")
    worker_ids = {worker["span_id"] for worker in workers}
    models = [span for span in spans if span["level"] == "model"]
    assert len(models) == CALLS and all(span["parent_span_id"] in worker_ids for span in models)
    assert root["attributes"]["process.exit.code"] == "0" and root["status"]["code"] != "error"


@pytest.mark.parametrize("level", ["layer", "library"])
def test_a_fork_pool_ended_by_terminate_finishes_every_time_and_its_workers_are_traced(served: Served, level: str) -> None:
    # Before fork safety, 5 runs of 10 hung: the workers' SIGTERM handler waited for a thread
    # the fork had not copied.
    for _ in range(3):
        started = time.monotonic()
        result, trace_id = mlscope_run(served, "--level", level, "--", sys.executable, PROGRAM, timeout=60)
        assert result.returncode == 0 and result.stdout == f"{CALLS}\n", result.stderr
        assert time.monotonic() - started < 30
        check_fork_pool_trace(served, trace_id, "SIGTERM")
        layers = [span for span in fork_pool_spans(served, trace_id) if span["level"] == "layer"]
        assert len(layers) >= CALLS  # the workers' deep spans, written by their own deferred workers


def test_a_fork_pool_closed_and_joined_ends_its_workers_process_spans(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--level", "library", "--", sys.executable, PROGRAM, "--close", timeout=60)
    assert result.returncode == 0, result.stderr
    check_fork_pool_trace(served, trace_id, None)


def test_children_sigtermed_as_they_start_end_as_their_own_process_spans(served: Served) -> None:
    # The parent SIGTERMs each child the moment os.fork returns, while the child is still in
    # its after-fork hooks: the child used to end the parent's span (its own never existed), or
    # lose the signal and never end.
    result, trace_id = mlscope_run(served, "--", sys.executable, "tests/e2e/fork_sigterm_program.py", timeout=60)
    assert (result.returncode, result.stdout) == (0, "SIGTERM\n" * CHILDREN), result.stderr
    spans = wait_for_trace(served, trace_id, 1 + CHILDREN)["spans"]
    (root,) = [span for span in spans if span["parent_span_id"] == ""]
    children = [span for span in spans if span is not root]
    assert len(children) == CHILDREN and len({span["span_id"] for span in spans}) == len(spans)
    assert all(child["parent_span_id"] == root["span_id"] for child in children)
    assert len({child["attributes"]["process.pid"] for child in children} - {root["attributes"]["process.pid"]}) == CHILDREN
    assert {(child["attributes"]["mlscope.process.signal"], child["attributes"]["process.exit.code"])
            for child in children} == {("SIGTERM", "143")}
    assert "mlscope.process.signal" not in root["attributes"]


def test_a_forked_helper_that_outlives_the_program_is_marked(served: Served) -> None:
    program = "import os, time\nif os.fork() == 0:\n    time.sleep(1)\n    print('helper', flush=True)\nelse:\n    print('ran', flush=True)"
    result, trace_id = mlscope_run(served, "--", sys.executable, "-c", program, timeout=60)
    assert (result.returncode, sorted(result.stdout.split())) == (0, ["helper", "ran"]), result.stderr
    trace = wait_for_trace(served, trace_id, 2)
    (root,) = [span for span in trace["spans"] if span["parent_span_id"] == ""]
    (helper,) = [span for span in trace["spans"] if span is not root]
    assert helper["parent_span_id"] == root["span_id"] and helper["end_ns"] > root["end_ns"]
    assert helper["attributes"]["mlscope.process.orphaned"] == "true"
    assert "mlscope.process.orphaned" not in root["attributes"]
    assert trace["warnings"] == []  # marked, not warned about as clock skew


def test_a_sigterm_the_main_thread_cannot_handle_still_ends_the_program_as_untraced(served: Served) -> None:
    # The main thread blocks SIGTERM, so the signal reaches another thread and the main thread's
    # sleep goes on: untraced, the signal kills the process at once; traced, the Python handler
    # would wait for the main thread (as a pool worker's semaphore wait that missed it would).
    program = ("import os, signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
               "print('ran', flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(600)")
    result, trace_id = mlscope_run(served, "--", sys.executable, "-c", program, timeout=60)
    assert (result.returncode, result.stdout) == (128 + signal.SIGTERM, "ran\n"), result.stderr
    (root,) = wait_for_trace(served, trace_id, 1)["spans"]
    assert (root["attributes"]["process.exit.code"], root["attributes"]["mlscope.process.signal"]) == ("143", "SIGTERM")


def test_ctrl_c_is_recorded_as_the_shell_sees_it(served: Served) -> None:
    result, trace_id = mlscope_run(served, "--", sys.executable, "-c", "raise KeyboardInterrupt")
    assert result.returncode == 128 + signal.SIGINT
    (root,) = wait_for_trace(served, trace_id, 1)["spans"]
    assert (root["attributes"]["process.exit.code"], root["attributes"]["mlscope.process.signal"]) == ("130", "SIGINT")
    assert root["status"]["code"] == "error"


def test_no_collector_one_line_the_program_runs_and_no_trace_is_claimed() -> None:
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{port}", "--level", "model", "--",
         sys.executable, "-c", "import sys; print('ran'); sys.exit(4)"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stdout) == (4, "ran\n")
    assert result.stderr.count("\n") == 1 and "no collector" in result.stderr, result.stderr
    assert "mlscope: trace" not in result.stderr
    assert elapsed < 10


def test_a_collector_gone_mid_run_is_not_waited_for_and_what_it_missed_is_reported(served: Served) -> None:
    program = "import sys; print('ready', flush=True); sys.stdin.readline(); print('ran')"
    run = subprocess.Popen(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{served.ports['otlp-http']}", "--",
         sys.executable, "-c", program],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert run.stdout.readline() == "ready\n"
    served.process.kill()
    served.process.wait()
    stdout, stderr = run.communicate("go\n", timeout=60)  # a hang guard: a refused export is not retried
    assert (run.returncode, stdout) == (0, "ran\n")
    assert re.fullmatch(r"mlscope: trace [0-9a-f]{32} is incomplete: 1 spans not delivered \(application 1\) to the "
                        r"collector at http://127\.0\.0\.1:\d+", stderr.splitlines()[-1]), stderr
    assert "retrying" not in stderr


@contextlib.contextmanager
def fake_collector(status_of: Callable[[int], int]) -> Iterator[int]:
    """An OTLP/HTTP endpoint (its port yielded) answering its Nth request (from 1, mlscope run's
    start-up check first) with the status `status_of(N)`, which may hold the answer."""
    requests = itertools.count(1)

    class Answering(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status_of(next(requests)))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_a_sigterm_whose_export_the_collector_does_not_answer_in_time_is_reported_not_claimed_stored() -> None:
    release = threading.Event()

    def held_after_the_check(request: int) -> int:
        if request > 1:
            release.wait(30)
        return 200

    with fake_collector(held_after_the_check) as port:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{port}", "--", sys.executable,
                 "-c", "import os, signal; print('ran', flush=True); os.kill(os.getpid(), signal.SIGTERM)"],
                capture_output=True, text=True, timeout=60, cwd=REPO,
            )
        finally:
            release.set()
    assert (result.returncode, result.stdout) == (128 + signal.SIGTERM, "ran\n")
    assert re.fullmatch(r"mlscope: trace [0-9a-f]{32} is incomplete: 1 spans not delivered \(application 1\) to the "
                        r"collector at http://127\.0\.0\.1:\d+", result.stderr.splitlines()[-1]), result.stderr


def test_spans_the_collector_refuses_are_reported_not_claimed_stored() -> None:
    with fake_collector(lambda request: 200 if request == 1 else 400) as port:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{port}", "--",
             sys.executable, "-c", "print('ran')"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    assert (result.returncode, result.stdout) == (0, "ran\n")
    assert re.search(r"^mlscope: trace [0-9a-f]{32} is incomplete: 1 spans not delivered", result.stderr, re.MULTILINE), \
        result.stderr
    assert not re.search(r"^mlscope: trace [0-9a-f]{32}$", result.stderr, re.MULTILINE)
    assert time.monotonic() - started < 10
