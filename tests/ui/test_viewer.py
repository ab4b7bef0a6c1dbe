"""The viewer in a real browser (Debian's Chromium driven by Playwright) over the query app on an
embedded store: trace list -> timeline, deep links, level filter, detail panel, SQL page, and a
span name that is an HTML injection attempt shown as plain text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect


from mlscope.query import create_query_app
from mlscope.store import Store
from mlscope.ui import SECURITY_HEADERS
from tests.query.query_server import serve
from tests.query.trace_fixtures import KNOWN, insert

SCREENSHOT = "/tmp/mlscope-viewer.png"
EVIL = "<img src=x onerror=window.__pwned=1>"
TRACE = KNOWN[0]["trace_id"]
ROWS = [{**KNOWN[0], "name": EVIL}, *KNOWN[1:]]

# The browser only needs the one backend; the API suite covers both.
# No skip when Chromium is missing: scripts/test installs it, and a missing browser must fail.
pytestmark = [pytest.mark.parametrize("store_url", ["embedded"], indirect=True)]


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    insert(store, ROWS)
    runner, url = await serve(create_query_app(store))
    try:
        yield url
    finally:
        await runner.cleanup()


async def open_page(browser: Browser, problems: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page


async def timeline_rows(page: Page) -> list[tuple[str, str]]:
    names = await page.locator(".row .name").all_text_contents()
    durations = await page.locator(".row .dur").all_text_contents()
    return list(zip(names, durations))


async def test_list_then_timeline_shows_untrusted_names_as_text(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    response = await page.goto(base_url + "/")
    assert response is not None
    assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    link = page.locator("a.trace-link")
    assert await link.text_content() == EVIL
    await link.click()
    await page.wait_for_url(f"{base_url}/traces/{TRACE}")
    await page.locator(".row").nth(4).wait_for()
    assert await timeline_rows(page) == [
        (EVIL, "100 ms"), ("predict", "80 ms"), ("conv1", "30 ms"), ("relu", "30 ms"), ("postprocess", "5 ms")]
    assert await page.locator("h1").text_content() == EVIL
    assert "null" not in await page.locator("main").inner_text()
    assert await page.locator("main img").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # Bars sit on the time axis: predict starts at 10% of the trace and lasts 80% of it.
    bar = page.locator(".row").nth(1).locator(".bar")
    track = page.locator(".row").nth(1).locator(".track")
    bar_box, track_box = await bar.bounding_box(), await track.bounding_box()
    assert bar_box and track_box
    assert abs((bar_box["x"] - track_box["x"]) / track_box["width"] - 0.10) < 0.01
    assert abs(bar_box["width"] / track_box["width"] - 0.80) < 0.01
    assert "level-model" in (await bar.get_attribute("class") or "")

    await page.locator(".row").first.click()
    detail = page.locator("aside.detail")
    assert await detail.locator("h2").text_content() == EVIL
    assert "resnet18" in await detail.locator("table").nth(1).text_content()

    await page.screenshot(path=SCREENSHOT, full_page=True)
    assert problems == []


async def test_deep_link_with_a_level_filter(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/traces/{TRACE}?levels=application,layer")
    await page.locator(".row").nth(3).wait_for()
    assert [name for name, _ in await timeline_rows(page)] == [EVIL, "conv1", "relu", "postprocess"]
    checked = {level: await page.locator(f"input[value={level}]").is_checked()
               for level in ("application", "model", "layer", "library", "hardware")}
    assert checked == {"application": True, "model": False, "layer": True, "library": False, "hardware": False}

    await page.locator("input[value=model]").check()
    await page.locator(".row").nth(4).wait_for()
    assert page.url == f"{base_url}/traces/{TRACE}?levels=application%2Cmodel%2Clayer"
    await page.locator("input[value=layer]").uncheck()
    await expect(page.locator(".row")).to_have_count(3)  # (wait_for_function would need eval: CSP refuses it)
    assert await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_layout_rows_is_a_pure_transform(base_url: str, browser: Browser) -> None:
    page = await open_page(browser, [])
    await page.goto(f"{base_url}/sql")
    await page.locator("#sql-query").wait_for()  # rendered: the conventions are loaded
    spans = [{"name": "a", "depth": 0, "level": "model", "start_ns": 1000, "end_ns": 2000, "duration_ns": 1000},
             {"name": "b", "depth": 1, "level": "weird", "start_ns": 1250, "end_ns": 1750, "duration_ns": 500}]
    rows: list[dict[str, Any]] = await page.evaluate(
        "spans => window.mlscopeViewer.layoutRows(spans).rows.map("
        "r => ({depth: r.depth, offset: r.offsetPct, width: r.widthPct, level: r.level, label: r.label}))", spans)
    assert rows == [{"depth": 0, "offset": 0, "width": 100, "level": "model", "label": "a 1 µs"},
                    {"depth": 1, "offset": 25, "width": 50, "level": "application", "label": "b 500 ns"}]
    # Nanosecond timestamps beyond 2**53 stay exact.
    exact = await page.evaluate("String(window.mlscopeViewer.parseJson('{\"t\": 1764000000000000123}').t)")
    assert exact == "1764000000000000123"


async def test_sql_page_runs_and_refuses(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/sql")
    await page.locator("#sql-query").fill("SELECT name FROM spans WHERE level = 'layer' ORDER BY name")
    await page.locator("#sql-run").click()
    await page.locator(".sql-result tbody tr").nth(1).wait_for()
    assert await page.locator(".sql-result tbody td").all_text_contents() == ["conv1", "relu"]
    await page.locator("#sql-query").fill("DROP TABLE spans")
    await page.locator("#sql-run").click()
    await page.locator("#sql-output .error").wait_for()
    assert "not DROP" in await page.locator("#sql-output .error").text_content()
    # The refused request's 400 is logged by the browser; nothing else may be.
    assert [p for p in problems if "400" not in p] == []
