"""A predictor belongs to the token that registered it (issue 11, finding 10): another predictor
token can neither heartbeat as it (and so receive its jobs), nor list, read or move the jobs sent
to it; an admin does all. The binding is stored, so a restarted query service keeps it. One
backend (embedded): identity does not depend on the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mlscope.auth import Caller, parse_token_file, token_fingerprint
from mlscope.dispatch import Dispatcher, DispatchTiming, dispatch_mount
from mlscope.dispatch.core import NotYours, check_acts_as
from mlscope.query import create_query_app
from mlscope.store import Store, open_store
from tests.dispatch.test_dispatch_api import A, B, heartbeat, job_request
from tests.query.query_server import serve

TOKENS = """
tokens:
  - {token: "predictor-a", scopes: [predictor]}
  - {token: "predictor-b", scopes: [predictor]}
  - {token: "admin-1", scopes: [admin]}
"""
AUTH = parse_token_file(TOKENS, "tokens.yaml")
TIMING = DispatchTiming(heartbeat_s=0.05, alive_s=60.0)
RUNS = ["pytorch/cpu", "onnxruntime/cpu"]


class Client:
    """One token's view of the API: (status, JSON) for each call."""

    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session, self.headers = session, {"Authorization": f"Bearer {token}"}

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.session.get(path, headers=self.headers) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: object) -> tuple[int, dict]:
        async with self.session.post(path, json=body, headers=self.headers) as response:
            return response.status, await response.json()


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"embedded://{tmp_path / 'store'}")
    yield opened
    opened.close()


async def serve_dispatch(store: Store) -> tuple[aiohttp.web.AppRunner, str]:
    return await serve(create_query_app(store, mounts=[dispatch_mount(Dispatcher(store, TIMING))], auth=AUTH))


async def test_a_predictor_token_acts_only_as_the_predictors_it_registered(store: Store) -> None:
    runner, base_url = await serve_dispatch(store)
    try:
        async with aiohttp.ClientSession(base_url) as session:
            token_a, token_b, admin = (Client(session, token) for token in ("predictor-a", "predictor-b", "admin-1"))
            assert (await token_a.post("/api/predictors", heartbeat(A, "pa", RUNS)))[0] == 200
            assert (await token_b.post("/api/predictors", heartbeat(B, "pb", RUNS)))[0] == 200
            # B's token re-registering A's id (to receive A's jobs) is refused; A's own heartbeat goes on.
            status, body = await token_b.post("/api/predictors", heartbeat(A, "evil", RUNS))
            assert status == 403 and "registered with another token" in body["error"]
            assert (await token_a.post("/api/predictors", heartbeat(A, "pa", RUNS)))[0] == 200
            assert {p["name"] for p in (await admin.get("/api/predictors"))[1]["predictors"]} == {"pa", "pb"}

            status, run = await admin.post("/api/jobs", job_request())
            assert status == 201
            job_of = {job["predictor_id"]: job["job_id"] for job in run["jobs"]}
            # Listing: each token sees its own predictor's jobs only, even when it asks for another's.
            assert [job["job_id"] for job in (await token_a.get("/api/jobs"))[1]["jobs"]] == [job_of[A]]
            assert (await token_b.get(f"/api/jobs?predictor_id={A}"))[1]["jobs"] == []
            assert len((await admin.get("/api/jobs"))[1]["jobs"]) == 2
            # Reading one job (its request holds the manifests) and moving it on.
            assert (await token_b.get(f"/api/jobs/{job_of[A]}"))[0] == 403
            assert "request" in (await token_a.get(f"/api/jobs/{job_of[A]}"))[1]
            assert "request" in (await admin.get(f"/api/jobs/{job_of[A]}"))[1]
            move_a = {"predictor_id": A, "state": "running"}
            assert (await token_b.post(f"/api/jobs/{job_of[A]}/state", move_a))[0] == 403
            assert (await token_a.post(f"/api/jobs/{job_of[A]}/state", move_a))[1]["state"] == "running"
    finally:
        await runner.cleanup()

    # A restarted service (a new Dispatcher, nothing in memory) reads the binding from the store.
    runner, base_url = await serve_dispatch(store)
    try:
        async with aiohttp.ClientSession(base_url) as session:
            assert (await Client(session, "predictor-b").post("/api/predictors", heartbeat(A, "evil", RUNS)))[0] == 403
            assert (await Client(session, "predictor-a").post("/api/predictors", heartbeat(A, "pa", RUNS)))[0] == 200
    finally:
        await runner.cleanup()


def test_who_may_act_as_a_predictor() -> None:
    owner = token_fingerprint(b"predictor-a")
    assert AUTH.caller("Bearer predictor-a") == Caller(owner=owner, admin=False)
    assert AUTH.caller("Bearer admin-1").admin and owner not in repr(TOKENS)
    check_acts_as(A, owner, Caller(owner, admin=False))
    check_acts_as(A, None, Caller("", admin=True))
    for owner_of_a in (token_fingerprint(b"predictor-b"), None, ""):
        with pytest.raises(NotYours):
            check_acts_as(A, owner_of_a, Caller(owner, admin=False))


async def test_a_predictor_registered_while_auth_was_off_is_never_claimed_by_a_token(store: Store) -> None:
    """Its host and pid are readable by any read token (its spans' resource), so
    the same heartbeat body proves nothing: every token but an admin's is refused, with how to
    go on, and the predictor registers again under a new id."""
    runner, base_url = await serve(create_query_app(store, mounts=[dispatch_mount(Dispatcher(store, TIMING))]))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            assert (await session.post("/api/predictors", json=heartbeat(A, "pa", RUNS))).status == 200
    finally:
        await runner.cleanup()
    runner, base_url = await serve_dispatch(store)
    try:
        async with aiohttp.ClientSession(base_url) as session:
            for token in ("predictor-a", "predictor-b"):
                status, body = await Client(session, token).post("/api/predictors", heartbeat(A, "pa", RUNS))
                assert status == 403 and "registered while auth was off" in body["error"]
                assert "MLSCOPE_TOKEN" in body["error"]
            assert (await Client(session, "admin-1").post("/api/predictors", heartbeat(A, "pa", RUNS)))[0] == 200
            assert (await Client(session, "predictor-a").post("/api/predictors", heartbeat(B, "pa", RUNS)))[0] == 200
    finally:
        await runner.cleanup()
