"""Predictors across machines, both ends:

- `PredictorProcess` (`mlscope predictor --server URL`): registers this machine's HW/SW stack
  and what it can run with the dispatch (beside the query service), heartbeats, pulls the jobs
  queued for it and runs each like `mlscope evaluate`, sending results to the collector; they land
  centrally.
- `submit` and `wait` (`mlscope evaluate --remote`): queue a plan for every matching predictor
  and follow the jobs until each is done, failed or lost.

The dispatch beside the query service keeps the registry and the queue in the store
(mlscope.dispatch).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mlscope.agents import default_endpoint
from mlscope.manifests import AssetCache, AssetError, ManifestError
from mlscope.manifests.trust import bounded
from mlscope.client import ServiceClient, ServiceError
from mlscope.conventions import PREDICTOR_ID, PREDICTOR_NAME

from .jobs import JobError, JobRequest, parse_job_request
from .predictors import EXECUTION_PROVIDERS, PREDICTORS, PredictorError
from .runner import EvaluationAgent, Origin, check_plan, evaluate
from .system import System, this_system

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "lost")


class Stopped(BaseException):
    """The predictor was asked to stop (SIGTERM or SIGINT, raised by `stop_on_signals`'s
    handler): the running job is failed and the predictor exits. A BaseException so that a job's
    own `except Exception` cannot swallow it."""


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise Stopped in the main thread, wherever it is."""

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


@dataclass(frozen=True)
class Identity:
    """What a predictor tells the dispatch about itself in every heartbeat."""

    predictor_id: str
    name: str
    host: str
    pid: int
    system: System
    execution_providers: tuple[str, ...]  # "framework/provider" pairs that run here
    labels: tuple[tuple[str, str], ...]
    started_ns: int
    allowed_builders: tuple[str, ...] = ()  # --allow-builder: told to the dispatch, which sends no job naming another

    def heartbeat(self) -> dict[str, Any]:
        return {
            "predictor_id": self.predictor_id, "name": self.name, "host": self.host, "pid": self.pid,
            "system": {"fingerprint": self.system.fingerprint, "name": self.system.name,
                       "description": self.system.description},
            "execution_providers": list(self.execution_providers), "labels": dict(self.labels),
            "started_ns": self.started_ns, "allowed_builders": list(self.allowed_builders),
        }


def runnable_here() -> tuple[str, ...]:
    """Every framework/provider pair this machine can run (e.g. onnxruntime/cuda with a GPU)."""
    pairs = []
    for framework, predictor_class in PREDICTORS.items():
        for provider in EXECUTION_PROVIDERS:
            try:
                predictor_class.resolve_provider(provider)
            except PredictorError:
                continue
            pairs.append(f"{framework}/{provider}")
    return tuple(pairs)


def this_predictor(name: str | None, labels: Sequence[tuple[str, str]],
                   allowed_builders: Sequence[str] = ()) -> Identity:
    host = socket.gethostname()
    return Identity(predictor_id=uuid.uuid4().hex, name=name or f"{host}-{os.getpid()}", host=host, pid=os.getpid(),
                    system=this_system(), execution_providers=runnable_here(), labels=tuple(labels),
                    started_ns=time.time_ns(), allowed_builders=tuple(allowed_builders))


class PredictorProcess:
    """Heartbeats from a background thread; runs jobs one at a time on the caller's thread."""

    def __init__(self, client: ServiceClient, identity: Identity, endpoint: str | None,
                 cache: AssetCache, poll_s: float = 1.0, shared_env: Mapping[str, str] | None = None) -> None:
        """`cache.sources` is what a job's models may be; `shared_env` the variables its
        manifests' ${VAR}s may read (only those its owner named: a job's text is anyone's)."""
        self._client = client
        self.identity = identity
        self._endpoint = endpoint
        self._cache = cache
        self._shared_env = dict(shared_env or {})
        self._poll_s = poll_s
        self._heartbeat_s = 5.0
        self._refused: ServiceError | None = None  # the service's answer when it refused a heartbeat

    def register(self) -> str:
        """The first heartbeat (ServiceError when the dispatch cannot be reached or refuses
        it); returns the collector endpoint results will be sent to, once it answers
        (DeliveryFailed when it does not)."""
        answer = self._client.post("/api/predictors", self.identity.heartbeat())
        self._heartbeat_s = float(answer.get("heartbeat_s", self._heartbeat_s))
        if self._endpoint is None:
            self._endpoint = _collector_endpoint(self._client.base_url, answer.get("otlp_http_port"))
        EvaluationAgent(self._endpoint, self.identity.system).check_collector()
        return self._endpoint

    def serve(self, stop: threading.Event, on_job: Callable[[str], None] = lambda line: None) -> None:
        """Pulls and runs jobs until `stop` is set; Stopped during a job marks it failed and
        propagates; ServiceError (401/403) once the service refuses a heartbeat, after the job
        under way ends."""
        beating = threading.Thread(target=self._beat, args=(stop,), name="mlscope-heartbeat", daemon=True)
        beating.start()
        try:
            while not stop.is_set():
                queued = self._queued_jobs()
                for job in queued:
                    on_job(f"job {job['job_id']} (run {job['run_id']}) started")
                    state = self._run(job["job_id"])
                    on_job(f"job {job['job_id']} {state}")
                if not queued:
                    stop.wait(self._poll_s)
        finally:
            stop.set()
            beating.join(timeout=10)
        if self._refused is not None:
            raise self._refused

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self._heartbeat_s):
            try:
                self._client.post("/api/predictors", self.identity.heartbeat())
            except ServiceError as exc:
                if exc.status in (401, 403):  # the token no longer may act as this predictor: retrying cannot help
                    self._refused = exc
                    stop.set()
                    return
                log.warning("heartbeat failed: %s", exc)  # the service may be restarting: keep trying

    def _queued_jobs(self) -> list[dict[str, Any]]:
        try:
            return self._client.get("/api/jobs", {"predictor_id": self.identity.predictor_id, "state": "queued"})["jobs"]
        except ServiceError as exc:
            log.warning("cannot read the job queue: %s", exc)
            return []

    def _run(self, job_id: str) -> str:
        """Runs one job; its final state. Whatever goes wrong in a job fails that job (with the
        reason), not the predictor."""
        job = self._set_state(job_id, "running")
        if job is None:
            return "skipped"
        try:
            results = self._evaluate(job)
        except Stopped:
            self._set_state(job_id, "failed", "the predictor was stopped during the job")
            raise
        except (JobError, AssetError, ManifestError, PredictorError) as exc:  # the job's fault: said in one line
            log.warning("job %s failed: %s", job_id, exc)
            self._set_state(job_id, "failed", bounded(str(exc)))
            return "failed"
        except Exception as exc:  # noqa: BLE001 - any job failure is reported, the predictor lives on
            log.exception("job %s failed", job_id)
            self._set_state(job_id, "failed", bounded(f"{type(exc).__name__}: {exc}"))
            return "failed"
        self._set_state(job_id, "done", f"{results} results", results)
        return "done"

    def _evaluate(self, job: dict[str, Any]) -> int:
        request: JobRequest = parse_job_request(json.loads(job["request"]), self._shared_env, self._cache.sources)
        check_plan(request.plan)  # this machine's providers
        system = self.identity.system
        origin = Origin(run_id=job["run_id"], predictor=self.identity.name, job_id=job["job_id"])
        sender = EvaluationAgent(self._endpoint, system, service="mlscope-predictor",
                                 resource={PREDICTOR_NAME: self.identity.name,
                                           PREDICTOR_ID: self.identity.predictor_id})
        with sender.closing():
            results = evaluate(request.plan, sender.agent_at, self._cache, system, origin=origin,
                               progress=lambda index, total, what: log.info("job %s: [%d/%d] %s", job["job_id"], index + 1,
                                                                           total, what))
        return len(results)

    def _set_state(self, job_id: str, state: str, message: str = "", results: int = 0) -> dict[str, Any] | None:
        body = {"predictor_id": self.identity.predictor_id, "state": state, "message": message, "results": results}
        try:
            return self._client.post(f"/api/jobs/{job_id}/state", body)
        except ServiceError as exc:
            log.warning("job %s: cannot mark it %s: %s", job_id, state, exc)
            return None


def _collector_endpoint(server_url: str, otlp_http_port: int | None) -> str:
    """The collector beside the query service when it says it has one, else the default."""
    if not otlp_http_port:
        return default_endpoint()
    parts = urlsplit(server_url)
    return f"{parts.scheme}://{parts.hostname}:{int(otlp_http_port)}"


# --- the submitting side ----------------------------------------------------------------------


def submit(client: ServiceClient, request: JobRequest) -> dict[str, Any]:
    """Queues `request`; the run id and one job per chosen predictor (ServiceError 409 when no
    live predictor matches, naming those alive)."""
    return client.post("/api/jobs", request.to_json())


def wait(client: ServiceClient, run_id: str, on_change: Callable[[dict[str, Any]], None],
         poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Follows a run's jobs until every one is done, failed or lost; calls `on_change` with a
    job each time its state changes; returns the jobs as they ended."""
    states: dict[str, str] = {}
    while True:
        jobs = client.get("/api/jobs", {"run_id": run_id})["jobs"]
        for job in jobs:
            if states.get(job["job_id"]) != job["state"]:
                states[job["job_id"]] = job["state"]
                on_change(job)
        if jobs and all(job["state"] in FINISHED for job in jobs):
            return jobs
        time.sleep(poll_s)
