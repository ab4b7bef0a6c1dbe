"""The viewer in a real browser (Debian's Chromium driven by Playwright) over the query app on an
embedded store: trace list -> timeline, deep links, level filter, detail panel, SQL page, and a
span name that is an HTML injection attempt shown as plain text. The timeline's own interactions
(zoom, search, window deep links) are in test_timeline.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
import pytest
from playwright.async_api import Browser, Page, expect


from mlscope.query import create_query_app
from mlscope.store import Store
from mlscope.ui import SECURITY_HEADERS
from tests.query import perfetto_reader
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


READY = '[data-testid=timeline][data-ready="1"]'


async def bar(page: Page, span: str) -> dict[str, float] | None:
    rect: dict[str, float] | None = await page.evaluate("id => window.mlscopeTimeline.barRect(id)", span)
    return rect


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
    await page.locator(READY).wait_for()
    assert await page.locator("h1").text_content() == EVIL
    assert "null" not in await page.locator("main").inner_text()
    assert await page.locator("main img").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # Bars sit on the time axis: predict starts at 10% of the trace and lasts 80% of it.
    predict = await bar(page, "00000000000000b2")
    timeline = await page.locator("[data-testid=timeline]").bounding_box()
    assert predict and timeline
    inner = timeline["width"] - 2  # the border
    assert abs((predict["x"] - timeline["x"] - 1) / inner - 0.10) < 0.01
    assert abs(predict["width"] / inner - 0.80) < 0.01

    root = await bar(page, "00000000000000a1")
    assert root
    await page.mouse.click(root["x"] + 40, root["y"] + root["height"] / 2)
    detail = page.locator("[data-testid=details]")
    await detail.locator("h2").wait_for()
    assert await detail.locator("h2").text_content() == EVIL
    assert "resnet18" in await detail.inner_text()

    await page.screenshot(path=SCREENSHOT, full_page=True)
    assert problems == []


async def test_deep_link_with_a_level_filter(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/traces/{TRACE}?levels=application,layer")
    await page.locator(READY).wait_for()
    assert "4 spans" in await page.locator(".meta").inner_text()
    assert await bar(page, "00000000000000b2") is None  # predict is a model span
    checked = {level: await page.locator(f"input[value={level}]").is_checked()
               for level in ("application", "model", "layer", "library", "hardware")}
    assert checked == {"application": True, "model": False, "layer": True, "library": False, "hardware": False}

    await page.locator("input[value=model]").check()
    await expect(page.locator(".meta")).to_contain_text("5 spans")
    assert page.url == f"{base_url}/traces/{TRACE}?levels=application%2Cmodel%2Clayer"
    await page.locator("input[value=layer]").uncheck()
    await expect(page.locator(".meta")).to_contain_text("3 spans")  # (wait_for_function would need eval: CSP refuses it)
    assert await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_perfetto_protobuf_download_holds_every_span(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/traces/{TRACE}")
    await page.locator(READY).wait_for()
    async with page.expect_download() as download_info:
        await page.get_by_text("Perfetto trace (protobuf)").click()
    download = await download_info.value
    assert download.suggested_filename == f"trace-{TRACE}.pftrace"
    path = await download.path()
    assert path is not None
    with open(path, "rb") as file:
        trace = perfetto_reader.read(file.read())
    spans = [row for row in ROWS if row["trace_id"] == TRACE]
    assert {span_id: (found.name, found.begin_ns, found.end_ns) for span_id, found in trace.slices.items()} == {
        span["span_id"]: (span["name"], span["start_ns"], span["end_ns"]) for span in spans}
    assert problems == []


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
