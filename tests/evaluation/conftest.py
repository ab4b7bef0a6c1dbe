"""`served`: a real `mlscope serve` process on the embedded store (collector, API and viewer on
OS-chosen ports), for the tests that run `mlscope evaluate` and predictors as users do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.served_process import Served, start_mlscope


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    process, ports = start_mlscope(
        ["serve", "--store", f"embedded://{tmp_path / 'store'}", "--port", "0", "--otlp-http-port", "0",
         "--otlp-grpc-port", "0"], tmp_path, ("otlp-http", "http"))
    yield Served(process, ports)
    process.terminate()
    process.wait(timeout=30)
