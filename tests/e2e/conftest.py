"""`mlscope serve` as a user runs it: a separate process, ports picked by the OS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.served_process import Served, start_mlscope


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    process, ports = start_mlscope(
        ["serve", "--store", f"embedded://{tmp_path / 'store'}", "--port", "0", "--otlp-http-port", "0",
         "--otlp-grpc-port", "0"],
        tmp_path,
        ("otlp-http", "otlp-grpc", "http"),
    )
    yield Served(process, ports)
    process.terminate()
    process.wait(timeout=30)
