"""Viewer benchmark: the trace page's canvas timeline on a large trace in headless Chromium.

    .venv/bin/python bench/ui.py [--spans 100000] [--spans 1000000] [--seconds 1.5] [--runs 3] [--server]

For each size it generates a library-level trace (process -> model calls -> layers -> ops, as
tests/ui/deep_trace.py builds them) into an embedded store in a temporary directory (a throwaway
clickhouse-server with --server), serves the query app with the viewer, opens /traces/{id} in
Debian's Chromium and prints:

- time to the first complete draw (navigation start -> data-ready="1"), and how much of it was
  the API responses arriving (the resource timing of /api/traces/{id}...), `--runs` times cold
  (opened right after the trace is stored, each time by a new query app, so its cache of compact
  forms is empty: past 200k spans the page reads windows, GET /api/traces/{id}/window, and the
  first one fills the trace's window cache; that cache is dropped before each run), then once
  settled (3 s after the query app's settler, query/settler.py, has filled the window cache of
  the quiet trace: by then it has also made the whole-trace answer of a trace up to 200k spans,
  so that first open is normally answered from the app's cache) and `--runs` times re-opened in that app (a trace read whole comes from its
  compact-form cache); the median of each;
- the window reads made while panning and zooming;
- frame times while zooming (W, S held), panning (A, D held) and turning the wheel: intervals
  between requestAnimationFrame callbacks in the page (a frame that takes too long shows as a
  longer interval), median and p95, and the timeline's own draw cost per frame.

Goals (issue 13): first draw <= 1 s for 100k spans, <= 2 s for 1M; frames <= 16 ms median and
<= 33 ms p95.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the trace builder lives with the viewer's tests

from mlscope.query import create_query_app  # noqa: E402
from mlscope.query import SettlerPolicy  # noqa: E402
from mlscope.query.windows import pyramids_built  # noqa: E402
from mlscope.store import Store, open_store  # noqa: E402
from tests.query.query_server import serve  # noqa: E402
from tests.query.trace_fixtures import insert  # noqa: E402
from tests.ui.conftest import CHROMIUM  # noqa: E402
from tests.ui.deep_trace import DEEP_TRACE, deep_trace_rows  # noqa: E402

LAYERS, OPS = 20, 4  # one model call is 1 + 20 * (1 + 4) = 101 spans
INSERT_BATCH = 50_000

# Installed in the page: requestAnimationFrame intervals until stopped.
START_FRAMES = """() => {
  window.__frames = []; window.__framing = true;
  let last = performance.now();
  const tick = (now) => { window.__frames.push(now - last); last = now; if (window.__framing) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""
STOP_FRAMES = "() => { window.__framing = false; return window.__frames; }"
FIRST_DRAW = """() => {
  const ready = window.mlscopeTimeline.firstDrawAt();
  return {
    ready,
    api: performance.getEntriesByType('resource').filter(e => e.name.includes('/api/traces/') && e.responseEnd <= ready)
           .map(e => e.responseEnd).reduce((a, b) => Math.max(a, b), 0),
    windowed: window.mlscopeTimeline.model.aggregateCount !== null,
    reads: performance.getEntriesByType('resource').filter(e => e.name.includes('/api/') && e.startTime <= ready)
             .map(e => ({ path: new URL(e.name).pathname.split('/').pop() + new URL(e.name).search.slice(0, 20),
                          start: e.startTime, end: e.responseEnd, bytes: e.encodedBodySize })),
  };
}"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def fill_store(url: str, spans: int) -> int:
    """Writes a trace of about `spans` spans; returns how many it has."""
    calls = max(1, spans // (1 + LAYERS * (1 + OPS)))
    rows = deep_trace_rows(calls=calls, layers=LAYERS, ops=OPS)
    store = open_store(url)
    try:
        for at in range(0, len(rows), INSERT_BATCH):
            insert(store, rows[at:at + INSERT_BATCH])
    finally:
        store.close()
    return len(rows)


async def hold(page: Page, key: str, seconds: float) -> None:
    await page.keyboard.down(key)
    await asyncio.sleep(seconds)
    await page.keyboard.up(key)


async def turn_wheel(page: Page, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    direction = -1
    while time.monotonic() < deadline:
        for _ in range(5):
            await page.mouse.wheel(0, 120 * direction)
            await asyncio.sleep(0.03)
        direction = -direction


async def measure(page: Page, seconds: float) -> dict[str, list[float]]:
    """Frame intervals per interaction, and the timeline's draw costs over all of them."""
    box = await page.locator("[data-testid=timeline]").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    phases: dict[str, list[float]] = {}
    drawn_before = len(await page.evaluate("window.mlscopeTimeline.drawTimes()"))
    for name, action in (("zoom in (W)", lambda: hold(page, "w", seconds)),
                         ("pan (D)", lambda: hold(page, "d", seconds)),
                         ("pan (A)", lambda: hold(page, "a", seconds)),
                         ("zoom out (S)", lambda: hold(page, "s", seconds)),
                         ("wheel", lambda: turn_wheel(page, seconds))):
        await page.evaluate(START_FRAMES)
        await action()
        phases[name] = (await page.evaluate(STOP_FRAMES))[1:]  # the first interval began before the phase
    phases["draw cost"] = (await page.evaluate("window.mlscopeTimeline.drawTimes()"))[drawn_before:]
    return phases


async def window_reads(page: Page) -> list[float]:
    """How long each windowed read took (resource timing), oldest first."""
    return await page.evaluate(  # type: ignore[no-any-return]
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/window'))"
        ".map(e => e.responseEnd - e.startTime)")


WINDOW_CACHE_TABLES = ("span_depths", "span_depth_buckets", "span_depth_tiles", "span_depth_fills")


async def first_draw(browser: Browser, base: str, seconds: float | None) -> float:
    """Opens the trace in a new page: prints its first complete draw (and the API reads under it)
    and, with `seconds`, the frames of each interaction; returns the first draw's time (ms)."""
    page = await browser.new_page(viewport={"width": 1600, "height": 900})
    await page.goto(f"{base}/traces/{DEEP_TRACE}")
    await page.locator('[data-testid=timeline][data-ready="1"]').wait_for(timeout=600_000)
    first = await page.evaluate(FIRST_DRAW)
    print(f"  first complete draw {first['ready']:.0f} ms after navigation "
          f"(API responses complete at {first['api']:.0f} ms; {'windowed' if first['windowed'] else 'whole'} read)")
    for read in first["reads"]:
        print(f"    {read['path']:28} {read['start']:6.0f} -> {read['end']:6.0f} ms  {read['bytes'] / 1e6:5.2f} MB")
    if seconds is not None:
        for name, values in (await measure(page, seconds)).items():
            if values:
                print(f"  {name:13} median {statistics.median(values):6.1f} ms  p95 {percentile(values, 0.95):6.1f} ms"
                      f"  max {max(values):6.1f} ms  ({len(values)} frames)")
        reads = await window_reads(page)
        if reads:
            print(f"  window reads  median {statistics.median(reads):6.1f} ms  p95 {percentile(reads, 0.95):6.1f} ms"
                  f"  max {max(reads):6.1f} ms  ({len(reads)} reads)")
    await page.close()
    return float(first["ready"])


SETTLED_OPEN_DELAY_S = 3.0


async def settled(store: Store, timeout_s: float = 600.0) -> None:
    """Until span_depth_fills holds a fill of the trace for its current row count, its pyramid built."""
    deadline = time.monotonic() + timeout_s
    statement = (f"SELECT count() FROM span_depth_fills WHERE trace_id = '{DEEP_TRACE}' AND pyramid_pending = 0 "
                 f"AND span_count = (SELECT count() FROM span_rows WHERE trace_id = '{DEEP_TRACE}')")
    while (await asyncio.to_thread(store.execute, statement)).rows[0][0] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the settler did not fill the trace in {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def bench(url: str, spans: int, seconds: float, runs: int) -> None:
    """Cold: the page opened right after the trace is stored (its first windowed read fills the
    window cache), `runs` times, the cache dropped before each; then settled: the query app's
    settler fills the trace once it is quiet, and the page is opened `runs` times. `url`: an empty
    store."""
    started = time.monotonic()
    count = fill_store(url, spans)
    print(f"\n{count:,} spans (stored in {time.monotonic() - started:.1f} s)")
    store = open_store(url)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            cold = []
            for run in range(runs):  # a new app each time: its compact-form cache starts empty
                # The last run's pyramid, still being built, would mark its fill readable again.
                await asyncio.to_thread(pyramids_built)
                for table in WINDOW_CACHE_TABLES:
                    store.execute(f"TRUNCATE TABLE {table}")
                runner, base = await serve(create_query_app(store))
                try:
                    print(f" cold, run {run + 1}")
                    cold.append(await first_draw(browser, base, None))
                finally:
                    await runner.cleanup()
            await asyncio.to_thread(pyramids_built)
            for table in WINDOW_CACHE_TABLES:
                store.execute(f"TRUNCATE TABLE {table}")
            runner, base = await serve(create_query_app(store, fill_window_caches=SettlerPolicy()))
            try:
                started = time.monotonic()
                await settled(store)
                print(f" settled (filled by the settler {time.monotonic() - started:.1f} s after the app started)")
                # As a user opens a run that ended a while ago: after the fill, the settler makes the
                # whole-trace answer of a trace the page reads whole (SettlerPolicy.warm_max_spans).
                await asyncio.sleep(SETTLED_OPEN_DELAY_S)
                first_open = await first_draw(browser, base, None)
                print(" re-opened (the app's compact-form cache holds the trace when it was read whole)")
                reopened = [await first_draw(browser, base, seconds if run == runs - 1 else None) for run in range(runs)]
            finally:
                await runner.cleanup()
            await browser.close()
        print(f"  first complete draw: cold, median of {runs}, {statistics.median(cold):.0f} ms "
              f"({', '.join(f'{value:.0f}' for value in cold)}); settled, first open {first_open:.0f} ms; "
              f"re-opened, median of {runs}, {statistics.median(reopened):.0f} ms "
              f"({', '.join(f'{value:.0f}' for value in reopened)})")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, action="append", help="trace size (repeatable; default 100000)")
    parser.add_argument("--seconds", type=float, default=1.5, help="how long each interaction lasts")
    parser.add_argument("--runs", type=int, default=3, help="first draws measured, cold and settled each")
    parser.add_argument("--server", action="store_true", help="a throwaway clickhouse-server instead of the embedded store")
    args = parser.parse_args()
    for spans in args.spans or [100_000]:
        with tempfile.TemporaryDirectory() as folder:
            if not args.server:
                asyncio.run(bench(f"embedded://{folder}/store", spans, args.seconds, args.runs))
                continue
            from deploy import clickhouse_local_server

            server = clickhouse_local_server.start(f"{folder}/ch")
            try:
                asyncio.run(bench(server.url, spans, args.seconds, args.runs))
            finally:
                server.stop()


if __name__ == "__main__":
    main()
