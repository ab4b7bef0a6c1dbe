"""Runs a Collector in its own process, for tests that kill it: prints `otlp-http: <port>` once
serving and stops gracefully on SIGTERM. Usage: python collector_process.py STORE_URL SPOOL_DIR"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from mlscope.collector import NO_GRPC, Collector, CollectorConfig
from mlscope.store import open_store


async def serve(store_url: str, spool_dir: str) -> None:
    store = open_store(store_url)
    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=NO_GRPC, spool_dir=spool_dir, replay_interval_s=0.2))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await collector.start()
    print(f"otlp-http: {collector.http_port}", flush=True)
    await stop.wait()
    await collector.stop()
    store.close()


def start_collector_process(store_url: str, spool_dir: Path) -> tuple[subprocess.Popen, int]:
    """Starts this script and returns the process and its OTLP/HTTP port."""
    process = subprocess.Popen(
        [sys.executable, __file__, store_url, str(spool_dir)], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    if not line.startswith("otlp-http: "):
        process.kill()
        raise RuntimeError(f"collector process did not start (said {line!r})")
    return process, int(line.split()[1])


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
