"""While AppThread serves, the process's garbage collector is set for ingest: what was alive at
start is frozen (no collection walks it again) and young collections wait for
SERVING_GC_THRESHOLD objects; stop() gives the previous settings back."""

from __future__ import annotations

import gc

from aiohttp import web

from mlscope.cli.app_thread import SERVING_GC_THRESHOLD, AppThread
from mlscope.listener import ListenerLimits


class _Alive:
    """A tracked object made before serving starts."""


async def test_the_collector_is_set_for_serving_while_the_app_serves_and_restored_after() -> None:
    before = gc.get_threshold()
    alive = _Alive()
    served = AppThread("test-serving-gc")
    await served.start(web.Application, ListenerLimits(), "127.0.0.1", 0)
    try:
        assert gc.get_threshold()[0] >= SERVING_GC_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
        assert not any(obj is alive for obj in gc.get_objects())  # frozen: no generation holds it
    finally:
        await served.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert any(obj is alive for obj in gc.get_objects())
