"""Shared fixtures. The store suite runs against both backends: embedded chdb and a real
clickhouse-server started here on a loopback port with a temporary data directory."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

from deploy import clickhouse_local_server

from mlscope.query.windows import pyramids_built
from mlscope.store import Store, open_store

BACKENDS = ("embedded", "server")


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[clickhouse_local_server.LocalClickHouse]:
    """One clickhouse-server for the whole run (MLSCOPE_TEST_CLICKHOUSE_DIR keeps its data)."""
    server = clickhouse_local_server.start()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def fresh_store_url(backend: str, tmp_path: Path, clickhouse_server) -> str:
    """A store URL with nothing in it yet: a new directory, or a new database on the server."""
    if backend == "embedded":
        return f"embedded://{tmp_path / 'store'}"
    return f"clickhouse://127.0.0.1:{clickhouse_server.port}/t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path: Path) -> str:
    server = request.getfixturevalue("clickhouse_server") if request.param == "server" else None
    return fresh_store_url(request.param, tmp_path, server)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    pyramids_built()  # a windowed read's fill builds its pyramid after the read, on this store
    opened.close()
