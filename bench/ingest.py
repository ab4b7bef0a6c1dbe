"""Ingest benchmark: acknowledged (so durable) spans per second through the collector, per backend.

    .venv/bin/python bench/ingest.py [--seconds 8] [--runs 3] [--connections 8] [--spans-per-request 1000]

First times the pure decoder (OTLP protobuf -> columns) alone. Then, for each backend (embedded
chdb in a temporary directory, a throwaway clickhouse-server), it runs a Collector in this process
while a second process posts pre-encoded OTLP/HTTP protobuf requests over several connections for
a fixed time and counts the spans answered 200 — a 200 is sent only once the batch is in the store
(or spooled), so that is the durable rate. Prints the median over the runs, the collector process's
CPU use, and both against the goal of 137k spans/s per core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from mlscope.conventions import (
    AGENT_SCOPE,
    BATCH_SIZE,
    FRAMEWORK_NAME,
    HOST_NAME,
    LAYER_TYPE,
    LEVEL,
    LOOPBACK,
    SERVICE_NAME,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: deploy/ is a folder of the repository, not installed

GOAL_SPANS_PER_CORE_S = 137_000
DISTINCT_BODIES = 16


def _attribute(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


def layer_trace(spans: int) -> bytes:
    """One trace shaped like an agent's layer-level run: a root and `spans - 1` layer spans with
    the handful of attributes an mlscope agent sets."""
    trace_id, root_id = os.urandom(16), os.urandom(8)
    start = time.time_ns()
    pb2_spans = [
        Span(
            trace_id=trace_id,
            span_id=root_id if index == 0 else os.urandom(8),
            parent_span_id=b"" if index == 0 else root_id,
            name="inference" if index == 0 else f"layer{index % 60}.conv",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start + index * 20_000,
            end_time_unix_nano=start + index * 20_000 + 15_000,
            attributes=[
                _attribute(LEVEL, "application" if index == 0 else "layer"),
                _attribute(LAYER_TYPE, "Conv2d"),
                _attribute(FRAMEWORK_NAME, "torch"),
                _attribute(BATCH_SIZE, 8),
                _attribute("bench.layer.flops", 1.8e9),  # a double, as agents write for figures
            ],
        )
        for index in range(spans)
    ]
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[_attribute(SERVICE_NAME, "bench"), _attribute(HOST_NAME, "bench-host")]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name=AGENT_SCOPE, version="0.1.0"), spans=pb2_spans)],
            )
        ]
    )
    return request.SerializeToString()


def decode_rate(spans_per_request: int, seconds: float) -> float:
    """Spans/s of parse + decode_traces alone, on one core."""
    from mlscope.collector.otlp import Encoding, decode_traces, parse_trace_request

    body = layer_trace(spans_per_request)
    decoded_spans = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        decoded_spans += decode_traces(parse_trace_request(body, Encoding.PROTOBUF)).rows
    return decoded_spans / (time.perf_counter() - started)


# --- the sending process ----------------------------------------------------------------------


async def send(url: str, spans_per_request: int, connections: int, seconds: float) -> dict[str, float]:
    bodies = [layer_trace(spans_per_request) for _ in range(DISTINCT_BODIES)]
    acknowledged = refused = 0
    deadline = time.perf_counter() + seconds

    async def connection(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal acknowledged, refused
        index = offset
        while time.perf_counter() < deadline:
            body = bodies[index % DISTINCT_BODIES]
            index += 1
            async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as response:
                await response.read()
                if response.status == 200:
                    acknowledged += spans_per_request
                else:
                    refused += 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "0.1")))

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(connection(session, offset) for offset in range(connections)))
    return {"spans": acknowledged, "refused_requests": refused, "seconds": time.perf_counter() - started}


# --- the collector process --------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    spans_per_s: float
    collector_cores: float  # CPU seconds of this process per wall second
    refused_requests: int

    @property
    def spans_per_core_s(self) -> float:
        return self.spans_per_s / self.collector_cores if self.collector_cores else 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_run(store, spool_dir: str, args: argparse.Namespace) -> RunResult:
    from mlscope.collector import NO_GRPC, Collector, CollectorConfig

    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=NO_GRPC, spool_dir=spool_dir))
    await collector.start()
    try:
        sender = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--send", f"http://{LOOPBACK}:{collector.http_port}/v1/traces",
            "--seconds", str(args.seconds), "--connections", str(args.connections),
            "--spans-per-request", str(args.spans_per_request),
            stdout=asyncio.subprocess.PIPE,
        )
        # The sender spends its first moments encoding bodies: measure CPU from its first request.
        while collector.status()["pending_spans"] == 0 and sender.returncode is None:
            await asyncio.sleep(0.001)
        cpu_before = _cpu_seconds()
        output, _ = await sender.communicate()
        cpu_used = _cpu_seconds() - cpu_before
    finally:
        await collector.stop()
    sent = json.loads(output)
    return RunResult(sent["spans"] / sent["seconds"], cpu_used / sent["seconds"], sent["refused_requests"])


def run_backend(backend: str, args: argparse.Namespace) -> list[RunResult]:
    from mlscope.store import open_store

    scratch = tempfile.mkdtemp(prefix=f"mlscope-bench-{backend}-")
    server = None
    try:
        if backend == "embedded":
            url = f"embedded://{scratch}/store"
        else:
            from deploy import clickhouse_local_server

            server = clickhouse_local_server.start(os.path.join(scratch, "clickhouse"))
            url = server.url
        store = open_store(url)
        try:
            return [asyncio.run(one_run(store, os.path.join(scratch, "spool"), args)) for _ in range(args.runs)]
        finally:
            store.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="sending time per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--spans-per-request", type=int, default=1000)
    parser.add_argument("--backends", default="embedded,server")
    parser.add_argument("--send", metavar="URL", help=argparse.SUPPRESS)  # the sending process
    args = parser.parse_args()
    if args.send:
        print(json.dumps(asyncio.run(send(args.send, args.spans_per_request, args.connections, args.seconds))))
        return

    print(f"{os.cpu_count()} cores; {args.spans_per_request} spans/request, {args.connections} connections, "
          f"{args.runs} runs of {args.seconds:g} s; goal {GOAL_SPANS_PER_CORE_S:,} spans/s per core")
    decode = statistics.median(decode_rate(args.spans_per_request, 2.0) for _ in range(3))
    print(f"decode only (parse + columns, 1 core): {decode:,.0f} spans/s = {decode / GOAL_SPANS_PER_CORE_S:.2f} x goal")
    for backend in args.backends.split(","):
        results = run_backend(backend, args)
        rate = statistics.median(result.spans_per_s for result in results)
        per_core = statistics.median(result.spans_per_core_s for result in results)
        cores = statistics.median(result.collector_cores for result in results)
        refused = sum(result.refused_requests for result in results)
        print(
            f"{backend:8s}: {rate:,.0f} durable spans/s (runs: {', '.join(f'{r.spans_per_s:,.0f}' for r in results)}); "
            f"collector process {cores:.2f} cores -> {per_core:,.0f} spans/s per core = "
            f"{per_core / GOAL_SPANS_PER_CORE_S:.2f} x goal; {refused} requests refused"
        )


if __name__ == "__main__":
    main()
