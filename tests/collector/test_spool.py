"""The write-ahead spool on its own, and its replay when a collector starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.collector.collector_testing import StartCollector, span_ids, span_request
from mlscope.collector.config import default_spool_dir
from mlscope.collector.spool import Spool, SpoolFull, SpoolInUse
from mlscope.conventions import ENV_DATA, SPOOL_DIR
from mlscope.store import Store


def test_a_spool_file_reads_back_request_by_request(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=2**20)
    first, second = span_request(2), span_request(3)

    written = spool.write("traces", [first.SerializeToString(), second.SerializeToString()])

    assert spool.files() == [written]
    assert (written.signal, spool.bytes) == ("traces", written.size)
    read_back = [ExportTraceServiceRequest.FromString(payload) for payload in spool.read(written)]
    assert [span_ids(request) for request in read_back] == [span_ids(first), span_ids(second)]
    spool.remove(written)
    assert (spool.files(), spool.bytes) == ([], 0)


def test_a_spool_file_from_before_the_framing_reads_back_as_one_merged_request(tmp_path: Path) -> None:
    first, second = span_request(2), span_request(3)
    (tmp_path / "00000000000000000001-1-000000.traces.pb").write_bytes(
        first.SerializeToString() + second.SerializeToString())

    with Spool(str(tmp_path), max_bytes=2**20) as spool:
        [legacy] = spool.files()
        [payload] = spool.read(legacy)

    assert span_ids(ExportTraceServiceRequest.FromString(payload)) == span_ids(first) + span_ids(second)


def test_one_process_owns_a_spool_at_a_time(tmp_path: Path) -> None:
    first = Spool(str(tmp_path), max_bytes=100)
    with pytest.raises(SpoolInUse, match=f"in use by another collector \\(pid {os.getpid()}\\)"):
        Spool(str(tmp_path), max_bytes=100)
    first.close()
    Spool(str(tmp_path), max_bytes=100).close()


def test_a_second_collector_on_the_same_spool_refuses_to_start(tmp_path: Path) -> None:
    store_url = f"embedded://{tmp_path / 'store'}"
    spool_dir = str(tmp_path / "spool")
    with Spool(spool_dir, max_bytes=100):
        result = subprocess.run(
            [sys.executable, "-m", "mlscope", "collector", "--store", store_url, "--spool-dir", spool_dir,
             "--otlp-http-port", "0", "--otlp-grpc-port", "0"],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mlscope: spool {spool_dir} is in use by another collector (pid {os.getpid()}); "
        "give each collector its own --spool-dir"]


def test_the_default_spool_is_one_per_store(tmp_path: Path) -> None:
    env = {ENV_DATA: str(tmp_path)}
    embedded = default_spool_dir("embedded:///srv/a", env)
    assert embedded == default_spool_dir("embedded:///srv/a", env)
    assert len({embedded, default_spool_dir("embedded:///srv/b", env),
                default_spool_dir("clickhouse://default@127.0.0.1:9000/mlscope", env)}) == 3
    assert Path(embedded).parent == tmp_path / SPOOL_DIR


def test_the_spool_is_bounded_and_counts_what_it_finds_on_start(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=100)
    spool.write("metrics", [b"x" * 52])  # 60 bytes with its frame header
    with pytest.raises(SpoolFull):
        spool.write("traces", [b"y" * 33])  # 41 bytes framed: one too many
    (tmp_path / "crashed-mid-write.traces.pb.tmp").write_bytes(b"partial")
    spool.close()

    reopened = Spool(str(tmp_path), max_bytes=100)

    assert reopened.bytes == 60
    assert [spooled.signal for spooled in reopened.files()] == ["metrics"]
    assert not (tmp_path / "crashed-mid-write.traces.pb.tmp").exists()


def test_unreadable_files_are_set_aside(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=100)
    written = spool.write("traces", [b"\xff\xff"])

    spool.quarantine(written, "not protobuf")

    assert (spool.files(), spool.bytes) == ([], 0)
    assert (tmp_path / f"{written.path.name}.corrupt").exists()


async def test_a_starting_collector_replays_the_spool(start_collector: StartCollector, store: Store, tmp_path: Path) -> None:
    requests = [span_request(4), span_request(6)]
    with Spool(str(tmp_path / "spool"), max_bytes=2**20) as spool:
        spool.write("traces", [requests[0].SerializeToString()])
        spool.write("traces", [requests[1].SerializeToString()])
        garbage = spool.write("traces", [b"\xff\xff\xff"])

    collector = await start_collector()
    while collector.status()["spooled_bytes"]:
        await asyncio.sleep(0.02)

    rows = (await asyncio.to_thread(store.execute, "SELECT span_id FROM spans")).rows
    assert sorted(row[0] for row in rows) == sorted(span_ids(requests[0]) + span_ids(requests[1]))
    assert Path(f"{garbage.path}.corrupt").exists()


async def test_a_file_the_store_keeps_refusing_is_set_aside(start_collector: StartCollector, store: Store, tmp_path: Path) -> None:
    # A reachable store that refuses an insert (here: span_rows has none of the rows' columns but
    # the trace id) must not let one spool file block the replay of everything behind it forever.
    with Spool(str(tmp_path / "spool"), max_bytes=2**20) as spool:
        refused = spool.write("traces", [span_request(3).SerializeToString()])
    await asyncio.to_thread(store.execute, "DROP TABLE span_rows")
    await asyncio.to_thread(store.execute, "CREATE TABLE span_rows (trace_id String) ENGINE = MergeTree ORDER BY trace_id")

    collector = await start_collector(replay_interval_s=0.05)
    async with asyncio.timeout(10):
        while collector.status()["spooled_bytes"]:
            await asyncio.sleep(0.02)

    assert Path(f"{refused.path}.rejected").exists()
    assert (await asyncio.to_thread(store.execute, "SELECT count() FROM span_rows")).rows == [(0,)]


async def test_the_replayer_outlives_a_failure_that_is_not_the_stores(
    start_collector: StartCollector, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen: EMFILE in the spool killed the replayer task, and every batch spooled after that
    # stayed there while /readyz said ready.
    request = span_request(3)
    with Spool(str(tmp_path / "spool"), max_bytes=2**20) as spool:
        spool.write("traces", [request.SerializeToString()])
    reading = Spool.read

    def out_of_file_descriptors(spool: Spool, spooled: object) -> list[bytes]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(Spool, "read", out_of_file_descriptors)
    collector = await start_collector(replay_interval_s=0.05)
    async with asyncio.timeout(10):
        while not collector.status()["replay_error"]:
            await asyncio.sleep(0.02)
    assert "Too many open files" in collector.status()["replay_error"]
    await asyncio.sleep(0.2)  # more failing passes: the replayer keeps retrying
    assert collector.status()["spooled_bytes"] > 0

    monkeypatch.setattr(Spool, "read", reading)
    async with asyncio.timeout(10):
        while collector.status()["spooled_bytes"] or collector.status()["replay_error"]:
            await asyncio.sleep(0.02)
    rows = (await asyncio.to_thread(store.execute, "SELECT span_id FROM spans")).rows
    assert sorted(row[0] for row in rows) == sorted(span_ids(request))
