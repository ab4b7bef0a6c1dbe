"""What the predictor registry tells whom (issue 11): where each predictor runs (host, pid) and
the jobs sent to it (their manifests) are the admin's, by GET /api/predictors as by SQL on
dispatch's views (`predictors`, `jobs`); no one sees whose token registered one. One backend
(embedded): what is shown does not depend on the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mlscope.auth import parse_token_file, token_fingerprint
from mlscope.dispatch import Dispatcher, DispatchTiming, dispatch_mount
from mlscope.query import create_query_app
from mlscope.store import Store, open_store
from tests.dispatch.test_dispatch_api import A, B, heartbeat
from tests.dispatch.test_predictor_identity import Client
from tests.query.query_server import serve

TOKENS = """
tokens:
  - {token: "reader-1", scopes: [read]}
  - {token: "own-a", scopes: [read, predictor]}
  - {token: "predictor-b", scopes: [predictor]}
  - {token: "admin-1", scopes: [admin]}
"""
AUTH = parse_token_file(TOKENS, "tokens.yaml")
RUNS = ["pytorch/cpu", "onnxruntime/cpu"]


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    store: Store = open_store(f"embedded://{tmp_path / 'store'}")
    mount = dispatch_mount(Dispatcher(store, DispatchTiming(heartbeat_s=0.05, alive_s=60.0)))
    runner, base_url = await serve(create_query_app(store, mounts=[mount], auth=AUTH))
    try:
        async with aiohttp.ClientSession(base_url) as client:
            assert (await Client(client, "own-a").post("/api/predictors", heartbeat(A, "pa", RUNS, rack="a")))[0] == 200
            assert (await Client(client, "predictor-b").post("/api/predictors", heartbeat(B, "pb", RUNS)))[0] == 200
            yield client
    finally:
        await runner.cleanup()
        store.close()


async def test_only_an_admin_lists_predictors_and_sees_where_they_run(session: aiohttp.ClientSession) -> None:
    for token in ("reader-1", "own-a", "predictor-b"):
        assert (await Client(session, token).get("/api/predictors"))[0] == 403, token
    status, body = await Client(session, "admin-1").get("/api/predictors")
    assert status == 200
    shown = {p["predictor_id"]: p for p in body["predictors"]}
    assert set(shown) == {A, B} and (shown[A]["host"], shown[A]["pid"], shown[A]["name"]) == ("box", 42, "pa")
    assert shown[A]["labels"] == {"rack": "a"} and shown[A]["execution_providers"] == RUNS and shown[A]["alive"]
    assert all("owner" not in p for p in body["predictors"])  # a token's fingerprint is shown to no one
    for fingerprint in (token_fingerprint(b"own-a"), token_fingerprint(b"predictor-b")):
        assert fingerprint not in str(body)


@pytest.mark.parametrize("query", [
    "SELECT owner, host, pid FROM predictors",
    "SELECT * FROM jobs",
    "SELECT count() FROM (SELECT host FROM `predictors`)",
])
async def test_dispatchs_views_are_the_admins_by_sql(session: aiohttp.ClientSession, query: str) -> None:
    async def sql(token: str) -> tuple[int, dict]:
        return await Client(session, token).post("/api/sql", {"query": query})

    status, body = await sql("reader-1")
    assert status == 400 and "admin scope's view" in body["error"]
    assert (await sql("admin-1"))[0] == 200


async def test_the_guards_own_refusals_come_first(session: aiohttp.ClientSession) -> None:
    status, body = await Client(session, "reader-1").post("/api/sql", {"query": "SELECT * FROM span_rows, predictors"})
    assert status == 400 and "span_rows is an internal table" in body["error"]
    assert (await Client(session, "reader-1").post("/api/sql", {"query": "SELECT count() FROM spans"}))[0] == 200
