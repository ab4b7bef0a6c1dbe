"""`mlscope serve` runs the collector on its loop and the query API on a loop of its own in its own
thread (cli/app_thread.py): the API answers while the collector's loop is held, SIGINT and SIGTERM
stop both, and a port that cannot be bound is an error that leaves neither running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from mlscope.cli.main import _serve
from mlscope.store import Store, open_store
from tests.collector.collector_testing import post, span_request
from tests.e2e.served_process import start_mlscope

HOST = "127.0.0.1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"embedded://{tmp_path / 'store'}")
    yield opened
    opened.close()


async def _started(store: Store, tmp_path: Path, port: int = 0) -> tuple[asyncio.Task[None], dict[str, int]]:
    """`_serve` running on this test's loop (so the collector's loop is this one) once every port
    is bound."""
    ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(_serve(store, HOST, port, 0, None, str(tmp_path / "spool"),
                                         on_ready=ready.set_result, no_dispatch=True))
    done, _ = await asyncio.wait([ready, serving], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert done, "serve did not bind its ports within 60 s"
    if serving in done:
        serving.result()
    return serving, ready.result()


@pytest.fixture
async def served(store: Store, tmp_path: Path) -> AsyncIterator[tuple[asyncio.Task[None], dict[str, int]]]:
    serving, ports = await _started(store, tmp_path)
    yield serving, ports
    if not serving.done():
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 60)


def _get(port: int, path: str) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as response:
        return response.status, json.loads(response.read())


def _refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _query_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "mlscope-query"]


async def test_the_api_answers_and_reads_what_was_ingested_while_the_collectors_loop_is_held(
        served: tuple[asyncio.Task[None], dict[str, int]]) -> None:
    _, ports = served
    request = span_request(3)
    trace_id = request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"http://{HOST}:{ports['otlp-http']}/v1/traces", request.SerializeToString())
    assert status == 200  # durable: in the store both loops share
    answers: list[tuple[int, dict]] = []

    def read() -> None:
        answers.append(_get(ports["http"], "/healthz"))
        answers.append(_get(ports["http"], f"/api/traces/{trace_id}"))

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=30)  # blocking: the collector's loop (this one) does nothing meanwhile
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == {"status": "ok"}
    assert answers[1][1]["trace_id"] == trace_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_stops_the_collector_and_the_api_thread(
        served: tuple[asyncio.Task[None], dict[str, int]], signum: int) -> None:
    serving, ports = served
    assert _query_threads()
    os.kill(os.getpid(), signum)
    await asyncio.wait_for(serving, 60)
    assert serving.result() is None
    assert _refused(ports["http"]) and _refused(ports["otlp-http"])
    assert not _query_threads()


async def test_an_api_port_in_use_fails_serve_and_leaves_neither_side_running(store: Store, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        ready: list[dict[str, int]] = []
        with pytest.raises(OSError, match="address already in use"):
            await _serve(store, HOST, taken.getsockname()[1], 0, None, str(tmp_path / "spool"), on_ready=ready.append)
    assert ready == []
    assert not _query_threads()
    # The collector, started before the API failed, was stopped: its spool (one owner at a time) is free.
    serving, _ = await _started(store, tmp_path)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 60)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_serve_command_exits_0_on_a_signal(tmp_path: Path, signum: int) -> None:
    process, ports = start_mlscope(
        ["serve", "--store", f"embedded://{tmp_path / 'store'}", "--port", "0", "--otlp-http-port", "0",
         "--otlp-grpc-port", "0"], tmp_path, ("otlp-http", "otlp-grpc", "http"))
    try:
        assert _get(ports["http"], "/healthz")[0] == 200
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_grpc_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "mlscope", "serve", "--store", f"embedded://{tmp_path / 'store'}",
             "--port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", str(port)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "MLSCOPE_DATA": str(tmp_path)})
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert f"cannot bind the OTLP/gRPC port {HOST}:{port}" in process.stderr
