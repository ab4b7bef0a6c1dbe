"""A predictor whose heartbeat the service refuses (401/403: its token may no longer act as
this predictor) stops with the service's reason instead of warning forever; any other failed
heartbeat (the service restarting) is retried."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mlscope.client import ServiceError
from mlscope.evaluation.remote import PredictorProcess, this_predictor
from mlscope.manifests import AssetCache


class ScriptedService:
    """Answers the predictor's requests: heartbeats with `heartbeat_errors` in turn (None: accepted),
    job queues empty."""

    def __init__(self, heartbeat_errors: list[ServiceError | None]) -> None:
        self._errors = list(heartbeat_errors)
        self.heartbeats = 0
        self.base_url = "http://127.0.0.1:1"

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/api/predictors"
        self.heartbeats += 1
        error = self._errors.pop(0) if self._errors else None
        if error is not None:
            raise error
        return {"heartbeat_s": 0.01}

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"jobs": []}


def serve(service: ScriptedService, tmp_path, stop: threading.Event) -> PredictorProcess:
    process = PredictorProcess(service, this_predictor("p", ()), "http://127.0.0.1:1", AssetCache(tmp_path), poll_s=0.01)
    process._heartbeat_s = 0.01  # what register() takes from the service's first answer
    process.serve(stop)
    return process


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_heartbeat_stops_the_predictor_with_the_reason(tmp_path, status: int) -> None:
    reason = "predictor abc was registered with another token; restart with MLSCOPE_TOKEN"
    service = ScriptedService([None, ServiceError(reason, status)])
    stop = threading.Event()
    guard = threading.Timer(10.0, stop.set)  # a predictor that keeps going returns here, without the error
    guard.start()
    with pytest.raises(ServiceError, match="registered with another token") as refused:
        serve(service, tmp_path, stop)
    guard.cancel()
    assert refused.value.status == status
    assert service.heartbeats == 2  # not retried


def test_a_service_that_is_away_is_retried(tmp_path) -> None:
    service = ScriptedService([ServiceError("cannot reach", None), ServiceError("restarting", 503), None, None])
    stop = threading.Event()
    stopper = threading.Timer(1.0, stop.set)
    stopper.start()
    serve(service, tmp_path, stop)  # returns when stopped, without raising
    assert service.heartbeats >= 4
