"""Predictors across machines, as users run them: a real `mlscope serve`, two `mlscope predictor`
processes on this machine (labelled as two racks), and `mlscope evaluate --remote`. Both run the
plan in parallel, results land centrally (one run id, each row naming its predictor); --where
picks one; a predictor stopped mid-job fails that job with the reason and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.served_process import REPO, Served


def mlscope(served: Served, tmp_path: Path, *args: str, popen: bool = False):
    command = [sys.executable, "-m", "mlscope", *args, "--server", served.url("")]
    # One data dir for all: the digits model is trained once and shared through the asset cache.
    env = {**os.environ, "MLSCOPE_DATA": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.fixture
def predictors(served: Served, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen]]:
    started = {name: mlscope(served, tmp_path, "predictor", "--name", name, "--label", f"rack={name[-1]}",
                             "--poll", "0.2", popen=True) for name in ("pa", "pb")}
    deadline = time.monotonic() + 120
    while len(served.get_json("/api/predictors?alive=1")["predictors"]) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in started.values()), [
            p.stderr.read() for p in started.values() if p.poll() is not None]
        time.sleep(0.2)
    yield started
    for process in started.values():
        process.terminate()
    for process in started.values():
        process.communicate(timeout=30)  # reading their output: a full pipe would block their exit


def wait_for_state(served: Served, run_id: str, state: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = served.get_json(f"/api/jobs?run_id={run_id}")["jobs"]
        if jobs and jobs[0]["state"] == state:
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never reached {state}: {jobs}")


def test_two_predictors_run_a_remote_evaluation(served: Served, tmp_path: Path,
                                                predictors: dict[str, subprocess.Popen]) -> None:
    done = mlscope(served, tmp_path, "evaluate", "digits", "--remote", "--framework", "pytorch,onnxruntime",
                   "--level", "model,layer", "--repetitions", "3", "--warmup", "1")
    assert done.returncode == 0, done.stderr
    run_id = next(line.split()[-1] for line in done.stderr.splitlines() if line.startswith("mlscope: run "))
    rows = served.get_json(f"/api/evaluations?run_id={run_id}")["evaluations"]
    assert sorted((row["predictor"], row["framework"], row["level"]) for row in rows) == sorted(
        (predictor, framework, level) for predictor in ("pa", "pb") for framework in ("pytorch", "onnxruntime")
        for level in ("model", "layer"))
    jobs = served.get_json(f"/api/jobs?run_id={run_id}")["jobs"]
    assert {job["job_id"] for job in jobs} == {row["job_id"] for row in rows}
    assert all((job["state"], job["results"]) == ("done", 4) for job in jobs)
    # In parallel: the two predictors' evaluation spans overlap in time.
    spans = served.post_json("/api/sql", {"query": (
        "SELECT attr_values[indexOf(resource_keys, 'mlscope.predictor.name')] AS p, start_ns, end_ns FROM spans "
        f"WHERE name = 'mlscope.evaluate' AND has(attr_values, '{run_id}') ORDER BY p")})[1]["rows"]
    (_, start_a, end_a), (_, start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a
    # The printed table has a row per result, naming the predictor.
    assert sum(bool({"pa", "pb"} & set(line.split())) for line in done.stdout.splitlines()) == len(rows)


def test_where_picks_a_predictor_and_a_stopped_predictor_fails_its_job(
        served: Served, tmp_path: Path, predictors: dict[str, subprocess.Popen]) -> None:
    refused = mlscope(served, tmp_path, "evaluate", "digits", "--remote", "--where", "rack=z")
    assert refused.returncode == 2
    assert refused.stderr.startswith("mlscope: no live predictor matches rack=z and runs pytorch/cpu; alive: ")

    queued = mlscope(served, tmp_path, "evaluate", "digits", "--remote", "--where", "rack=b", "--where", "name=pb",
                     "--repetitions", "1000000", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    assert " queued for pb " in queued.stderr
    run_id = queued.stderr.strip().splitlines()[-1].split()[-1]
    wait_for_state(served, run_id, "running")
    predictors["pb"].send_signal(signal.SIGTERM)
    try:
        _, stderr = predictors["pb"].communicate(timeout=60)  # reads stderr while it stops
    except subprocess.TimeoutExpired:
        predictors["pb"].kill()
        pytest.fail(f"predictor pb still running 60 s after SIGTERM; its stderr: {predictors['pb'].communicate()[1]}")
    assert predictors["pb"].returncode == 0, stderr
    job = wait_for_state(served, run_id, "failed")
    assert job["message"] == "the predictor was stopped during the job"
    assert "predictor pb stopped" in stderr


@pytest.mark.parametrize(("args", "reason"), [
    (["predictor", "--server", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9"),
    (["evaluate", "digits", "--remote", "--server", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9"),
    (["evaluate", "digits", "--endpoint", "http://127.0.0.1:9"], "cannot send to the collector at http://127.0.0.1:9"),
])
def test_an_unreachable_service_is_one_line_before_any_work(tmp_path: Path, args: list[str], reason: str) -> None:
    answer = subprocess.run([sys.executable, "-m", "mlscope", *args], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "MLSCOPE_DATA": str(tmp_path)})
    assert answer.returncode == 1
    assert len(answer.stderr.strip().splitlines()) == 1 and reason in answer.stderr
