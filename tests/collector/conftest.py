"""Collector fixtures: Collectors serving on 127.0.0.1 (ports picked by the OS) in front of the
`store` fixture, so every test that uses them runs against both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.collector.collector_testing import StartCollector, quick_config
from mlscope.collector import Collector
from mlscope.store import Store

@pytest.fixture
async def start_collector(store: Store, tmp_path: Path) -> AsyncIterator[StartCollector]:
    """`await start_collector(**config_overrides)`: a started Collector, stopped after the test."""
    started: list[Collector] = []

    async def start(**overrides: object) -> Collector:
        collector = Collector(store, quick_config(tmp_path, **overrides))
        await collector.start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.stop()


@pytest.fixture
async def collector(start_collector: StartCollector) -> Collector:
    return await start_collector()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
