"""Predictors and jobs over HTTP, on both store backends: heartbeats register predictors, a
request queues one job per matching live predictor, only a job's own predictor moves it on, and a
job whose predictor went silent reads as lost; it is mounted beside the query API, which alone
serves none of it. The dispatch's pure parts are tested here too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mlscope.dispatch import Dispatcher, DispatchTiming, dispatch_mount
from mlscope.dispatch.core import matches, parse_heartbeat, parse_job_filter
from mlscope.evaluation.jobs import ManifestText
from mlscope.manifests import read_manifest
from mlscope.query import create_query_app
from mlscope.query.errors import BadRequest
from mlscope.store import Store
from tests.query.query_server import serve

A, B = "a" * 32, "b" * 32
DIGITS = ManifestText(*read_manifest("digits"))
TIMING = DispatchTiming(heartbeat_s=0.05, alive_s=1.0)
OTLP_PORT = 4999


def heartbeat(predictor_id: str, name: str, providers: list[str], **labels: str) -> dict:
    return {"predictor_id": predictor_id, "name": name, "host": "box", "pid": 42,
            "system": {"fingerprint": f"{name}-fp", "name": f"{name}-host", "description": "2 CPUs"},
            "execution_providers": providers, "labels": labels, "started_ns": 1}


def job_request(**where: str) -> dict:
    return {"manifests": [{"source": DIGITS.source, "text": DIGITS.text}],
            "plan": {"frameworks": ["pytorch", "onnxruntime"], "batch_sizes": [1]}, "where": where}


class Api:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.session.get(path) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: object) -> tuple[int, dict]:
        async with self.session.post(path, json=body) as response:
            return response.status, await response.json()

    async def move(self, job_id: str, predictor_id: str, state: str, **extra: object) -> tuple[int, dict]:
        return await self.post(f"/api/jobs/{job_id}/state", {"predictor_id": predictor_id, "state": state, **extra})


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    mount = dispatch_mount(Dispatcher(store, TIMING), otlp_http_port=OTLP_PORT)
    runner, base_url = await serve(create_query_app(store, mounts=[mount]))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            yield Api(session)
    finally:
        await runner.cleanup()


async def test_jobs_go_to_matching_predictors_and_move_on(api: Api) -> None:
    assert await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu", "onnxruntime/cpu"], rack="a")) == (
        200, {"predictor_id": A, "heartbeat_s": TIMING.heartbeat_s, "otlp_http_port": OTLP_PORT})
    await api.post("/api/predictors", heartbeat(B, "pb", ["pytorch/cpu", "onnxruntime/cpu", "onnxruntime/cuda"], rack="b"))
    status, body = await api.get("/api/predictors")
    assert status == 200
    assert {(p["name"], p["alive"], p["labels"]["rack"], tuple(p["frameworks"])) for p in body["predictors"]} == {
        ("pa", True, "a", ("pytorch", "onnxruntime")), ("pb", True, "b", ("pytorch", "onnxruntime"))}

    status, everywhere = await api.post("/api/jobs", job_request())
    assert status == 201 and {job["predictor"] for job in everywhere["jobs"]} == {"pa", "pb"}
    status, rack_a = await api.post("/api/jobs", job_request(rack="a", system="pa-host"))
    assert status == 201 and [job["predictor"] for job in rack_a["jobs"]] == ["pa"]
    job_id = rack_a["jobs"][0]["job_id"]

    status, queued = await api.get(f"/api/jobs?predictor_id={A}&state=queued")
    assert status == 200 and {job["run_id"] for job in queued["jobs"]} == {everywhere["run_id"], rack_a["run_id"]}
    assert "request" not in queued["jobs"][0]

    assert (await api.move(job_id, B, "running"))[0] == 409  # not pb's job
    assert (await api.move(job_id, A, "done"))[0] == 409  # not running yet
    status, running = await api.move(job_id, A, "running")
    assert status == 200 and running["state"] == "running"
    assert running["request"].startswith('{"manifests"')  # what the predictor runs
    status, done = await api.move(job_id, A, "done", message="4 results", results=4)
    assert (status, done["state"], done["results"]) == (200, "done", 4)
    status, refused = await api.move(job_id, A, "failed")
    assert status == 409 and refused["error"] == f"job {job_id} is done: it cannot become failed"
    status, run = await api.get(f"/api/jobs?run_id={rack_a['run_id']}")
    assert [(job["state"], job["message"]) for job in run["jobs"]] == [("done", "4 results")]
    _, oldest_first = await api.get("/api/jobs")
    _, latest = await api.get("/api/jobs?latest=2")
    assert [job["job_id"] for job in latest["jobs"]] == [job["job_id"] for job in oldest_first["jobs"]][::-1][:2]
    assert latest["jobs"][0]["job_id"] == job_id


async def test_no_match_names_the_live_predictors(api: Api) -> None:
    status, body = await api.post("/api/jobs", job_request())
    assert status == 409 and body["error"].endswith("no predictor is alive (start one with: mlscope predictor --server URL)")
    await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu", "onnxruntime/cpu"], rack="a"))
    status, body = await api.post("/api/jobs", job_request(rack="c"))
    assert status == 409
    assert body["error"] == ("no live predictor matches rack=c and runs pytorch/cpu, onnxruntime/cpu; alive: pa "
                             "(system pa-host/pa-fp, runs pytorch/cpu, onnxruntime/cpu, rack=a)")
    cuda = {**job_request(), "plan": {**job_request()["plan"], "execution_provider": "cuda"}}
    assert (await api.post("/api/jobs", cuda))[0] == 409


async def test_a_silent_predictors_unfinished_jobs_are_lost(api: Api) -> None:
    await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu", "onnxruntime/cpu"]))
    await api.post("/api/predictors", heartbeat(B, "pb", ["pytorch/cpu", "onnxruntime/cpu"]))
    _, queued = await api.post("/api/jobs", job_request())
    jobs = {job["predictor_id"]: job["job_id"] for job in queued["jobs"]}
    await api.move(jobs[A], A, "running")
    await api.move(jobs[B], B, "running")
    await api.move(jobs[B], B, "done", results=2)
    await asyncio.sleep(TIMING.alive_s + 0.3)  # both go silent: only the unfinished job is lost
    _, run = await api.get(f"/api/jobs?run_id={queued['run_id']}")
    assert {job["predictor_id"]: job["state"] for job in run["jobs"]} == {A: "lost", B: "done"}
    _, alive = await api.get("/api/predictors?alive=1")
    assert alive == {"predictors": []}
    await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu", "onnxruntime/cpu"]))  # back again
    _, job = await api.get(f"/api/jobs/{jobs[A]}")
    assert job["state"] == "running"


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("POST", "/api/predictors", [], 400, "a heartbeat must be a JSON object"),
    ("POST", "/api/predictors", {**heartbeat(A, "pa", ["cpu"])}, 400, "execution_providers: expected"),
    ("POST", "/api/predictors", {**heartbeat("A" * 32, "pa", ["pytorch/cpu"])}, 400, "predictor_id must be 32"),
    ("POST", "/api/predictors", {**heartbeat(A, "", ["pytorch/cpu"])}, 400, "name: expected a non-empty string"),
    ("POST", "/api/predictors", {**heartbeat(A, "pa", ["pytorch/cpu"]), "pid": -1}, 400, "pid: expected"),
    ("POST", "/api/jobs", {"manifests": []}, 400, "manifests: expected a non-empty list"),
    ("POST", "/api/jobs", "not an object", 400, "the request must be a JSON object"),
    ("GET", "/api/jobs?state=paused", None, 400, "state must be one of queued, running, done, failed"),
    ("GET", "/api/jobs?run_id=x", None, 400, "run_id must be 32 lower-case hex digits"),
    ("GET", "/api/jobs?latest=0", None, 400, "latest must be between 1 and 10000"),
    ("GET", f"/api/jobs/{A}", None, 404, f"job {A} not found"),
    ("GET", "/api/jobs/xyz", None, 400, "job id must be 32 lower-case hex digits"),
    ("POST", f"/api/jobs/{A}/state", {"predictor_id": A, "state": "queued"}, 400, "state must be one of running"),
    ("POST", f"/api/jobs/{A}/state", {"predictor_id": A, "state": "done"}, 404, f"job {A} not found"),
])
async def test_bad_requests_get_a_clear_error(api: Api, method: str, path: str, body: object, status: int,
                                              error: str) -> None:
    answer = await (api.post(path, body) if method == "POST" else api.get(path))
    assert answer[0] == status and answer[1]["error"].startswith(error), answer


async def test_a_broken_json_body_is_a_400(api: Api) -> None:
    async with api.session.post("/api/jobs", data=b"{", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400 and (await response.json())["error"].startswith("the body must be JSON")


def test_matching_keys() -> None:
    predictor = {"system": "fp1", "system_name": "gpu-box", "name": "p1", "host": "h1", "predictor_id": A,
                 "labels": {"gpu": "h200"}, "execution_providers": ["pytorch/cpu", "onnxruntime/cuda"]}
    assert matches(predictor, [("system", "fp1")], [])
    assert matches(predictor, [("system", "gpu-box"), ("gpu", "h200"), ("host", "h1")], ["onnxruntime/cuda"])
    assert not matches(predictor, [("system", "h1")], [])
    assert not matches(predictor, [("gpu", "a100")], [])
    assert not matches(predictor, [], ["pytorch/cuda"])


def test_heartbeat_and_filter_parsing() -> None:
    parsed = parse_heartbeat(heartbeat(A, "pa", ["pytorch/cpu"], zone="z", gpu="no"))
    assert parsed.labels == (("gpu", "no"), ("zone", "z"))
    with pytest.raises(BadRequest, match="labels"):
        parse_heartbeat({**heartbeat(A, "pa", ["pytorch/cpu"]), "labels": {"Zone": "z"}})
    assert parse_job_filter({"run_id": "", "state": "done"}).state == "done"


async def test_openapi_documents_the_query_api_and_the_mounted_dispatch(api: Api, store: Store) -> None:
    status, document = await api.get("/openapi.json")
    assert status == 200
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    app = create_query_app(store, mounts=[dispatch_mount(Dispatcher(store))])
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and route.resource.canonical.startswith("/api/")}
    assert served <= documented
    assert {("POST", "/api/predictors"), ("GET", "/api/jobs/{job_id}"), ("POST", "/api/jobs/{job_id}/state")} <= served
    assert {"Heartbeat", "Job", "StateChange", "TraceSummary"} <= set(document["components"]["schemas"])


async def test_the_query_app_alone_serves_no_dispatch_route(store: Store) -> None:
    runner, base_url = await serve(create_query_app(store))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            async with session.post("/api/predictors", json=heartbeat(A, "pa", ["pytorch/cpu"])) as response:
                assert response.status == 404
            async with session.get("/api/jobs") as response:
                assert response.status == 404 and (await response.json())["error"] == "Not Found"
            async with session.get("/openapi.json") as response:
                assert not {path for path in (await response.json())["paths"] if path.startswith(("/api/jobs", "/api/predictors"))}
    finally:
        await runner.cleanup()


def manifest_job(text: str) -> dict:
    return {"manifests": [{"source": "job.yaml", "text": text}], "plan": {"frameworks": ["pytorch"], "batch_sizes": [1]}}


async def test_a_job_naming_code_no_predictor_allows_is_refused_at_submit(api: Api) -> None:
    abort = manifest_job(DIGITS.text.replace("mlscope.manifests.models:digits_mlp", "os:abort"))
    await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu"]))
    status, refused = await api.post("/api/jobs", abort)
    assert status == 400 and refused["error"].startswith(
        "model.builder os:abort is not one of mlscope's built-in builders and no matching live predictor allows it "
        "(mlscope predictor --allow-builder MODULE:FUNCTION)")
    await api.post("/api/predictors", {**heartbeat(B, "pb", ["pytorch/cpu"]), "allowed_builders": ["os:abort"]})
    status, queued = await api.post("/api/jobs", abort)  # its owner allowed it: the job goes to pb alone
    assert status == 201 and [job["predictor"] for job in queued["jobs"]] == ["pb"]
    status, refused = await api.post("/api/jobs", {**abort, "where": {"name": "pa"}})
    assert status == 400 and "no matching live predictor allows it" in refused["error"]


async def test_a_yaml_bomb_is_refused_fast_and_the_loop_keeps_answering(api: Api) -> None:
    laughs = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                       + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
                       + ["name: *i"])
    started = asyncio.get_running_loop().time()
    status, refused = await api.post("/api/jobs", manifest_job(laughs))
    assert status == 400 and "aliases (*a) are not allowed" in refused["error"] and len(refused["error"]) < 600
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_the_stored_request_keeps_variables_unexpanded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_NOTE", "a secret of the submitting machine")
    text = DIGITS.text.replace("description: A two-layer", "description: ${MODEL_NOTE} A two-layer")
    await api.post("/api/predictors", heartbeat(A, "pa", ["pytorch/cpu"]))
    status, queued = await api.post("/api/jobs", manifest_job(text))
    assert status == 201
    _, job = await api.get(f"/api/jobs/{queued['jobs'][0]['job_id']}")
    assert json.loads(job["request"])["manifests"][0]["text"] == text and "secret" not in job["request"]
