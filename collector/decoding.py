"""Where a request is decoded: a small one inline on the event loop, a large one in a small pool of
worker threads, so that a big body never holds the collector's loop (the other requests it reads
and answers, and any app served on the same loop) for the whole of its decode. The decode still
holds the GIL most of the time; in a thread it is preempted every few milliseconds, which is what
lets the loop answer. (`mlscope serve` runs the query API on a loop and thread of its own.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Result = TypeVar("Result")


class Decoder:
    def __init__(self, inline_max_bytes: int, threads: int) -> None:
        self._inline_max_bytes = inline_max_bytes
        # At most `threads` decodes at once: more wait in the pool's queue (their bodies are read
        # already, bounded by the body size and connection limits).
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mlscope-decode")

    async def run(self, size: int, decode: Callable[..., Result], *args: object) -> Result:
        """`decode(*args)` for a body of `size` bytes: inline up to the inline limit, else in a
        decode thread; its exception propagates either way."""
        if size <= self._inline_max_bytes:
            return decode(*args)
        return await asyncio.get_running_loop().run_in_executor(self._threads, decode, *args)

    def close(self) -> None:
        """Lets the decodes under way finish in their threads; takes no new one."""
        self._threads.shutdown(wait=False)
