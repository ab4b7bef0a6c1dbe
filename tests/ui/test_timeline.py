"""The trace page's canvas timeline in a real browser (Debian's Chromium driven by Playwright):
zoom with keys and the wheel until an op is a clickable bar, its details, search landing on a
layer, a level toggle, deep links that restore the window and the selection, and an HTML
injection attempt as a span name shown as text. Bars are read through the page's test hook
window.mlscopeTimeline.barRect(spanId) (there is no DOM node per span to find).

Screenshots are saved under tests/ui/artifacts/ (ignored by git) to be looked at."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route

from mlscope.query import create_query_app, windows
from mlscope.store import Store
from tests.query.query_server import serve
from tests.query.test_counters import insert_samples
from tests.query.trace_fixtures import insert, row
from tests.ui.deep_trace import DEEP_TRACE, deep_trace_rows, span_id

ARTIFACTS = Path(__file__).parent / "artifacts"
EVIL = "<img src=x onerror=window.__pwned=1>"
PROCESS, MODEL, LAYER, OP = (span_id(n) for n in (1, 2, 3, 4))  # the first call's first layer and op
THIRD_LAYER = span_id(11)  # features.2 (ReLU) of the first call: 2 + 2 * (1 + 3) + 1
# What a hardware-level run samples: CPU utilisation and a GPU's power, every 50 ms over the run.
SAMPLES = [("svc", "system.cpu.utilization", "1", ms, 0.2 + 0.6 * (ms % 300) / 300, {}) for ms in range(0, 1001, 50)] + [
    ("svc", "hw.power", "W", ms, 100 + ms / 10, {"hw.id": "gpu0"}) for ms in range(0, 1001, 50)]
ROWS = [{**r, "name": EVIL} if r["span_id"] == span_id(5) else r for r in deep_trace_rows()]
READY = '[data-testid=timeline][data-ready="1"]'

pytestmark = [pytest.mark.parametrize("store_url", ["embedded"], indirect=True)]


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    insert(store, ROWS)
    insert_samples(store, SAMPLES)
    runner, url = await serve(create_query_app(store))
    try:
        yield url
    finally:
        await runner.cleanup()


# A trace past ?window_over= is answered 413 to the compact read asked for beside its counters
# (max_spans): Chromium logs that as a failed resource, and the page reads windows instead.
WINDOWED_413 = "the server responded with a status of 413"


async def open_trace(browser: Browser, url: str, problems: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    windowed = "window_over=" in url
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not (windowed and WINDOWED_413 in message.text) else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(url)
    await page.locator(READY).wait_for()
    return page


async def bar(page: Page, span: str) -> dict[str, float] | None:
    rect: dict[str, float] | None = await page.evaluate("id => window.mlscopeTimeline.barRect(id)", span)
    return rect


async def view(page: Page) -> dict[str, Any]:
    return await page.evaluate("window.mlscopeTimeline.currentView()")


async def until(page: Page, check: Callable[[], Awaitable[bool]], seconds: float = 10) -> bool:
    """Polls `check` (wait_for_function would need eval, which the page's CSP refuses)."""
    for _ in range(int(seconds * 20)):
        if await check():
            return True
        await page.wait_for_timeout(50)
    return False


async def selected_is(page: Page, span: str) -> bool:
    return (await view(page))["selected"] == span


async def selected_is_not(page: Page, span: str) -> bool:
    return (await view(page))["selected"] != span


async def url_has(page: Page, *parts: str) -> bool:
    return all(part in page.url for part in parts)


async def no_bar(page: Page, span: str) -> bool:
    return await bar(page, span) is None


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name))


async def zoom_onto(page: Page, span: str, width_px: float) -> dict[str, float]:
    """Zooms around `span`'s bar, alternately holding W and turning the wheel with the mouse on
    the bar, until the bar is wider than `width_px`. Both inputs zoom around the cursor, so the
    bar stays under it however slow the machine is."""
    for attempt in range(40):
        rect = await bar(page, span)
        assert rect is not None, f"{span} left the view"
        if rect["width"] > width_px:
            return rect
        await page.mouse.move(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
        if attempt % 2:
            await page.mouse.wheel(0, -400)
        else:
            await page.keyboard.down("w")
            await page.wait_for_timeout(250)
            await page.keyboard.up("w")
        await page.wait_for_timeout(50)  # one frame
    raise AssertionError(f"{span} never grew wider than {width_px} px")


async def test_zoom_until_an_op_is_wide_then_click_it(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    first = await bar(page, OP)
    assert first is not None and first["width"] < 2  # an op is a sliver of the whole process
    await screenshot(page, "timeline-whole.png")

    rect = await zoom_onto(page, OP, 50)
    await page.mouse.click(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
    details = page.locator("[data-testid=details]")
    await details.locator("h2", has_text="aten::conv2d").wait_for()
    text = await details.inner_text()
    assert "library" in text and "self time" in text and "mlscope.op.index" in text
    assert await details.locator("button.span-link").first.text_content() == "features.0 (Conv2d)"  # the parent
    await screenshot(page, "timeline-op.png")

    # The parent link selects the layer and brings it into view.
    await details.locator("button.span-link").first.click()
    await details.locator("h2", has_text="features.0 (Conv2d)").wait_for()
    assert (await view(page))["selected"] == LAYER
    assert problems == []


async def test_search_lands_on_a_layer_and_the_link_restores_it(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    search = page.locator("[data-testid=search]")
    await search.fill("features.2")
    await search.press("Enter")
    details = page.locator("[data-testid=details]")
    await details.locator("h2", has_text="features.2 (ReLU)").wait_for()
    assert (await view(page))["selected"] == THIRD_LAYER
    rect = await bar(page, THIRD_LAYER)
    box = await page.locator("[data-testid=timeline]").bounding_box()
    assert rect and box and rect["width"] > 20
    assert box["x"] <= rect["x"] and rect["x"] + rect["width"] <= box["x"] + box["width"]
    await screenshot(page, "timeline-search.png")
    await search.press("Enter")  # the next call's features.2
    assert await until(page, lambda: selected_is_not(page, THIRD_LAYER))

    # The URL keeps the window and the selection (written a moment after the view settles).
    shown = await view(page)
    assert await until(page, lambda: url_has(page, f"span={shown['selected']}", f"start={shown['startNs']}"))
    pasted = await open_trace(browser, page.url, problems)
    assert await view(pasted) == shown
    await pasted.locator("[data-testid=details] h2", has_text="features.2 (ReLU)").wait_for()
    assert problems == []


async def test_level_toggle_keeps_the_window(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    await zoom_onto(page, LAYER, 100)
    before = await view(page)
    await page.wait_for_timeout(400)  # the URL catches up with the view
    await page.locator("input[value=library]").uncheck()
    await page.locator(READY).wait_for()
    assert await until(page, lambda: no_bar(page, OP))  # ops are gone
    assert await bar(page, LAYER) is not None
    assert "levels=application%2Cmodel%2Clayer%2Chardware" in page.url
    after = await view(page)
    assert (after["startNs"], after["endNs"]) == (before["startNs"], before["endNs"])
    await screenshot(page, "timeline-levels.png")
    assert problems == []


async def test_an_html_span_name_is_text(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    search = page.locator("[data-testid=search]")
    await search.fill("onerror")
    await search.press("Enter")
    details = page.locator("[data-testid=details]")
    await details.locator("h2").filter(has_text="onerror").wait_for()
    assert await details.locator("h2").text_content() == EVIL
    assert await page.locator("main img").count() == 0
    assert await page.evaluate("window.__pwned") is None
    await screenshot(page, "timeline-evil.png")
    assert problems == []


async def test_ruler_relabels_with_the_zoom(base_url: str, browser: Browser) -> None:
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", [])
    ticks = "(args) => window.mlscopeTimelineLib.niceTicks(...args).map(t => t.label)"
    assert await page.evaluate(ticks, [0, 1e9, 1000]) == ["0.0 s", "0.1 s", "0.2 s", "0.3 s", "0.4 s", "0.5 s",
                                                          "0.6 s", "0.7 s", "0.8 s", "0.9 s", "1.0 s"]
    assert await page.evaluate(ticks, [100_200_000, 100_600_000, 400]) == [
        "100.2 ms", "100.3 ms", "100.4 ms", "100.5 ms", "100.6 ms"]
    labels = await page.evaluate("window.mlscopeTimelineLib.spanLabel({name: '3', attributes: "
                                 "{'mlscope.layer.path': 'features.3', 'mlscope.layer.type': 'Conv2d'}})")
    assert labels == "features.3 (Conv2d)"


async def analysis_of(page: Page) -> dict[str, Any]:
    return await page.evaluate(f"fetch('/api/traces/{DEEP_TRACE}/analysis').then(r => r.json())")  # type: ignore[no-any-return]


async def test_critical_path_toggle_outlines_its_spans(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    toggle = page.locator("[data-testid=critical-path]")
    await toggle.check()
    path = [step["span_id"] for step in (await analysis_of(page))["critical_path"]]
    assert path[0] == PROCESS and len(path) == 5  # process -> worker -> model -> last layer -> its last op
    assert await page.evaluate("window.mlscopeTimeline.outlinedIds()") == path
    await zoom_onto(page, path[2], 200)
    await screenshot(page, "timeline-critical-path.png")
    await toggle.uncheck()
    assert await page.evaluate("window.mlscopeTimeline.outlinedIds()") == []
    assert problems == []


async def test_analysis_rows_select_and_search(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    tables = page.locator("[data-testid=analysis] table")
    top = (await analysis_of(page))["top_self"][0]
    await tables.nth(0).locator("button").first.click()
    assert await until(page, lambda: selected_is(page, top["span_id"]))
    await tables.nth(1).locator("button", has_text="aten::mm").click()
    assert await page.locator("[data-testid=search]").input_value() == "aten::mm"
    await page.locator("[data-testid=details] h2", has_text="aten::mm").wait_for()
    await tables.nth(2).locator("button", has_text="features.4 (Linear)").click()
    await page.locator("[data-testid=details] h2", has_text="features.4").wait_for()
    await screenshot(page, "timeline-analysis.png")
    assert problems == []


async def test_counter_tracks_under_the_spans(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    titles: list[str] = []

    async def has_tracks() -> bool:
        titles[:] = await page.evaluate("window.mlscopeTimeline.counterTitles()")
        return len(titles) == 2

    assert await until(page, has_tracks)
    assert sorted(titles) == ["hw.power hw.id=gpu0 (W)", "system.cpu.utilization"]
    await screenshot(page, "timeline-counters.png")
    assert problems == []


async def test_minimap_drag_moves_the_window(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", problems)
    await zoom_onto(page, LAYER, 100)  # a narrow window near the start of the run
    before = await view(page)
    box = await page.locator("[data-testid=minimap]").bounding_box()
    assert box is not None
    left = box["x"] + box["width"] * (before["startNs"] + before["endNs"]) / 2 / 1e9  # the window's centre (1 s run)
    await page.mouse.move(left, box["y"] + box["height"] / 2)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2, steps=5)
    await page.mouse.up()
    after = await view(page)
    width = before["endNs"] - before["startNs"]
    assert after["endNs"] - after["startNs"] == pytest.approx(width, rel=1e-6)  # moved, not zoomed
    assert (after["startNs"] + after["endNs"]) / 2 == pytest.approx(0.75e9, rel=0.01)
    await screenshot(page, "timeline-minimap.png")
    assert problems == []


async def test_windowed_read_shows_aggregates_then_single_spans(base_url: str, browser: Browser) -> None:
    """?window_over=10 makes the 127-span test trace "big": the page reads windows, the whole run
    first, where the ops are narrower than a pixel and come merged."""
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}?window_over=10", problems)
    assert await until(page, lambda: windows_read(page, 1))  # the first read at the canvas's width
    aggregates = await page.evaluate("window.mlscopeTimeline.aggregateIds()")
    assert aggregates and await bar(page, OP) is None  # the op is inside an aggregate
    rect = await bar(page, aggregates[0])
    assert rect is not None
    await page.mouse.click(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
    details = page.locator("[data-testid=details]")
    await details.locator("h2", has_text="spans merged").wait_for()
    assert "summed time" in await details.inner_text()
    await screenshot(page, "timeline-windowed-whole.png")

    # Zooming onto the first model call, the reads that follow bring its ops as spans of their own.
    await zoom_onto(page, MODEL, 300)
    assert await until(page, lambda: in_window(page, OP))
    # Single spans come with their level, attributes and parent: the layer reads as a layer
    # (its label, its level's colour) and is the op's parent.
    layer = await page.evaluate("""id => { const t = window.mlscopeTimeline; const i = t.model.byId.get(id);
        return { label: t.model.labels[i], fill: t.barFill(id), children: t.childrenOf(i).map((c) => t.model.spanIds[c]),
                 colour: getComputedStyle(document.documentElement).getPropertyValue("--layer").trim() }; }""", LAYER)
    assert layer["label"] == "features.0 (Conv2d)" and layer["fill"] == layer["colour"] and OP in layer["children"]
    search = page.locator("[data-testid=search]")
    await search.fill("aten::conv2d")
    await search.press("Enter")
    await details.locator("h2", has_text="aten::conv2d").wait_for()
    assert "library" in await details.inner_text()  # the level, from the span's own answer
    selected = (await view(page))["selected"]
    assert await bar(page, selected) is not None
    await screenshot(page, "timeline-windowed-op.png")
    assert problems == []


async def test_a_big_trace_says_what_it_reads_while_its_first_window_is_prepared(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    page.on("pageerror", lambda error: problems.append(str(error)))
    held: asyncio.Future[Route] = asyncio.get_running_loop().create_future()
    await page.route("**/window*", lambda route: held.set_result(route) if not held.done() else route.continue_())
    await page.goto(f"{base_url}/traces/{DEEP_TRACE}?window_over=10")
    route = await asyncio.wait_for(held, 10)  # the first window read, not answered yet
    loading = page.locator("[data-testid=loading]")
    assert "Reading 127 spans a window at a time" in await loading.inner_text()
    await route.continue_()
    await page.locator(READY).wait_for()
    assert await loading.count() == 0 and problems == []


async def windows_read(page: Page, count: int) -> bool:
    return bool(await page.evaluate("window.mlscopeTimeline.windowReads()") >= count)


async def in_window(page: Page, span: str) -> bool:
    """`span` is in the windowed read's answer as a span of its own (an aggregate has no span id)."""
    return bool(await page.evaluate("id => window.mlscopeTimeline.model.byId.has(id)", span))


async def test_windowed_detail_links_parent_and_children(base_url: str, browser: Browser) -> None:
    """In windowed mode a single span's details link its parent and its children in the window,
    as with the whole trace; names stay text (one child is the hostile name)."""
    problems: list[str] = []
    url = f"{base_url}/traces/{DEEP_TRACE}?window_over=10&start=99000000&end=112000000"  # the first model call
    page = await open_trace(browser, url, problems)
    assert await until(page, lambda: in_window(page, OP))
    assert await page.evaluate("window.mlscopeTimeline.model.aggregateCount !== null")
    rect = await bar(page, LAYER)
    assert rect is not None
    await page.mouse.click(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
    details = page.locator("[data-testid=details]")
    await details.locator("h2", has_text="features.0 (Conv2d)").wait_for()
    links = details.locator("button.span-link")
    assert await links.all_text_contents() == ["resnet18", "aten::conv2d", EVIL, "aten::relu"]  # parent, then children
    assert "Children in the window (3)" in await details.inner_text()
    await screenshot(page, "timeline-windowed-relatives.png")

    await links.nth(2).click()  # a child: the hostile name, as text
    await details.locator("h2").filter(has_text="onerror").wait_for()
    assert (await view(page))["selected"] == span_id(5)
    assert await details.locator("h2").text_content() == EVIL
    await details.locator("button.span-link").first.click()  # its parent: the layer again
    await details.locator("h2", has_text="features.0 (Conv2d)").wait_for()
    assert (await view(page))["selected"] == LAYER
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_windowed_search_covers_the_whole_trace_and_moves_the_window(base_url: str, browser: Browser) -> None:
    """Zoomed onto the first model call, a search finds the layers of every call (the whole trace,
    GET /api/traces/{id}/search), and next/previous move the window to each one and select it."""
    problems: list[str] = []
    url = f"{base_url}/traces/{DEEP_TRACE}?window_over=10&start=99000000&end=112000000"  # the first model call
    page = await open_trace(browser, url, problems)
    assert await until(page, lambda: windows_read(page, 1))  # the read of the view, after the whole trace's
    assert await in_window(page, OP)
    third_layers = [r["span_id"] for r in sorted(ROWS, key=lambda r: r["start_ns"]) if r["attr_values"][:1] == ["features.2"]]
    assert len(third_layers) == 5  # 4 calls and the worker's
    assert not await in_window(page, third_layers[1])  # the second call is outside the window read
    search = page.locator("[data-testid=search]")
    count = page.locator("[data-testid=search-count]")
    await search.fill("Features.2")
    await count.filter(has_text="5 matches in the trace").wait_for()
    details = page.locator("[data-testid=details]")
    for expected in (*third_layers, third_layers[0]):  # next through all, wrapping to the first
        await search.press("Enter")
        assert await until(page, lambda: selected_is(page, expected)), expected
        assert await bar(page, expected) is not None  # drawn, as a span of its own
        await details.locator("h2", has_text="features.2 (ReLU)").wait_for()
    await search.press("Shift+Enter")  # previous, wrapping to the last
    assert await until(page, lambda: selected_is(page, third_layers[-1]))
    assert await count.text_content() == "5 of 5 matches in the trace"
    rect = await bar(page, third_layers[-1])
    box = await page.locator("[data-testid=timeline]").bounding_box()
    assert rect and box and box["x"] <= rect["x"] and rect["x"] + rect["width"] <= box["x"] + box["width"]
    await screenshot(page, "timeline-windowed-search.png")
    # A hostile name is searched for as text, found, and drawn as text.
    await search.fill("onerror")
    await search.press("Enter")
    assert await until(page, lambda: selected_is(page, span_id(5)))
    await details.locator("h2").filter(has_text="onerror").wait_for()
    assert await details.locator("h2").text_content() == EVIL and await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_window_entry_whose_parent_is_outside_keeps_its_id(base_url: str, browser: Browser) -> None:
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}", [])
    model = await page.evaluate("""() => {
      const lib = window.mlscopeTimelineLib;
      const entry = (id, parent, depth) => ({ span_id: id, parent_span_id: parent, track: "svc", depth, name: id,
        level: "layer", start_ns: "1000", end_ns: "2000", count: 1, total_ns: 1000 });
      const answer = { entries: [entry("b", "a", 1), entry("c", "b", 2), entry("", "", 2)] };
      answer.entries[2].count = 5;
      const m = lib.buildModel(lib.windowColumns(answer, 0n, "application"), ["application", "layer"], "application");
      return { parent: Array.from(m.parent), parentIds: m.parentIds };
    }""")
    assert model == {"parent": [-1, 0, -1], "parentIds": ["a", "b", ""]}


async def test_a_growing_trace_says_how_many_of_its_spans_the_windows_show(
        base_url: str, browser: Browser, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace that grew since its windows were prepared is drawn from them at once, the page
    saying how many of its spans that shows, until it has been prepared again."""
    monkeypatch.setattr(windows, "REFILL_POLICY", windows.RefillPolicy(age_over_work=0, min_age_s=0))
    problems: list[str] = []
    page = await open_trace(browser, f"{base_url}/traces/{DEEP_TRACE}?window_over=10", problems)
    shown = page.locator("[data-testid=span-count]")
    assert await shown.inner_text() == "127 spans (read a window at a time)"
    await asyncio.to_thread(windows.pyramids_built)  # a fill is made again only once its pyramid is built
    insert(store, [row(span_id(4000), PROCESS, "late", 990, 995, trace_id=DEEP_TRACE)])
    await page.reload()
    await page.locator(READY).wait_for()
    assert await shown.inner_text() == "showing 127 of 128 spans (the trace is growing)"
    await asyncio.to_thread(windows.pyramids_built)  # the refill the read started
    await page.reload()
    await page.locator(READY).wait_for()
    assert await shown.inner_text() == "128 spans (read a window at a time)"
    assert problems == []
