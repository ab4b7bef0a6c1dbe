"""The compare, SQL and trace-list pages in a real browser (Debian's Chromium via Playwright) over
the query app on an embedded store: the /api/diff table sorted biggest change first and by any
column, the compare picker, the SQL page's schema, results, CSV and chart, and the trace list's
filters bound to the URL. A hostile layer path / model name shows as text everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from mlscope.conventions import LAYER_PATH, LAYER_TYPE, MODEL_NAME
from mlscope.query import create_query_app
from mlscope.store import Store
from tests.query.query_server import serve
from tests.query.trace_fixtures import MS, T0, row
from tests.query.trace_fixtures import insert as insert_rows
from tests.ui.test_evaluations_page import table_rows
from tests.ui.test_timeline import until
from tests.ui.test_viewer import open_page

SHOTS = Path(__file__).parent / "artifacts"
# Records the Blob URLs the page makes and revokes (the real functions still run).
COUNT_OBJECT_URLS = """() => {
  const made = [], revoked = [], create = URL.createObjectURL, revoke = URL.revokeObjectURL;
  window.__objectUrls = { made, revoked };
  URL.createObjectURL = (blob) => { const url = create(blob); made.push(url); return url; };
  URL.revokeObjectURL = (url) => { revoked.push(url); revoke(url); };
}"""
EVIL = "<img src=x onerror=window.__pwned=1>"
A, B = "a" * 32, "b" * 32


def layer(span_id: str, parent: str, path: str, start: float, end: float, trace_id: str) -> dict:
    return row(span_id, parent, path, start, end, "layer", trace_id=trace_id,
               attributes={LAYER_PATH: path, LAYER_TYPE: "Conv2d"})


def trace(trace_id: str, conv: float, relu: float, extra: str, model: str) -> list[dict]:
    """pipeline > predict > features.0 (conv ms, holding one matmul op), features.1 (relu ms), extra."""
    p = trace_id[:2]
    return [
        row(f"{p}000000000000a1", "", "pipeline", 0, 200, "application", trace_id=trace_id, service=f"svc-{p}",
            attributes={MODEL_NAME: model}),
        row(f"{p}000000000000b2", f"{p}000000000000a1", "predict", 10, 190, "model", trace_id=trace_id),
        layer(f"{p}000000000000c3", f"{p}000000000000b2", "features.0", 20, 20 + conv, trace_id),
        row(f"{p}000000000000d4", f"{p}000000000000c3", "aten::matmul", 21, 19 + conv, "library", trace_id=trace_id),
        layer(f"{p}000000000000c5", f"{p}000000000000b2", "features.1", 100, 100 + relu, trace_id),
        layer(f"{p}000000000000c6", f"{p}000000000000b2", extra, 150, 155, trace_id),
    ]


ROWS = [*trace(A, conv=30, relu=40, extra="head", model="resnet18"),
        *trace(B, conv=60, relu=30, extra=EVIL, model=EVIL)]
pytestmark = [pytest.mark.parametrize("store_url", ["embedded"], indirect=True)]


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    insert_rows(store, ROWS)
    runner, url = await serve(create_query_app(store))
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_compare_diff_table_sorted_and_picker(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/compare")
    # No ids: a picker of the traces; submitting it opens their diff.
    await page.locator("#compare-pick select[name=a]").select_option(A)
    await page.locator("#compare-pick select[name=b]").select_option(B)
    await page.locator("#compare-pick button").click()
    await page.wait_for_url(f"{base_url}/compare?a={A}&b={B}")
    await page.locator("table.diff-layers tbody tr").nth(1).wait_for()
    # Biggest |delta| first: features.0 +30 ms, then features.1 -10 ms.
    assert await table_rows(page, "table.diff-layers") == [
        ["features.0", "30 ms", "60 ms", "+30 ms", "2×"],
        ["features.1", "40 ms", "30 ms", "-10 ms", "0.75×"],
    ]
    assert [r[0] for r in await table_rows(page, "table.only-a")] == ["head"]
    assert [r[0] for r in await table_rows(page, "table.only-b")] == [EVIL]
    assert (await table_rows(page, "table.diff-ops"))[0][:4] == ["aten::matmul", "28 ms", "58 ms", "+30 ms"]
    # A header click sorts on that column: b/a descending, then ascending.
    ratio = page.locator("table.diff-layers button[data-column=ratio]")
    await ratio.click()
    assert [r[0] for r in await table_rows(page, "table.diff-layers")] == ["features.0", "features.1"]
    await ratio.click()
    assert [r[0] for r in await table_rows(page, "table.diff-layers")] == ["features.1", "features.0"]
    await page.screenshot(path=str(SHOTS / "compare-diff.png"), full_page=True)

    await page.goto(f"{base_url}/compare?a=nothex&b={B}")
    await expect(page.locator("main .error")).to_contain_text("trace id (32 hex)")
    await expect(page.locator("#compare-pick select[name=a] option")).to_have_count(2)
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_compare_timelines_share_one_time_axis(base_url: str, browser: Browser) -> None:
    """Both traces drawn, each from its own start on the same ns per pixel; a wheel zoom on one
    and a held key over the other move both."""
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/compare?a={A}&b={B}")
    lanes = page.locator("[data-testid=compare-timelines]")
    await expect(lanes.locator('[data-testid=timeline][data-ready="1"]')).to_have_count(2)
    views = "window.mlscopeCompareTimelines.map((t) => t.view())"
    rect = "([k, id]) => window.mlscopeCompareTimelines[k].barRect(id)"
    conv_a, conv_b = await page.evaluate(rect, [0, "aa000000000000c3"]), await page.evaluate(rect, [1, "bb000000000000c3"])
    assert conv_a["x"] == pytest.approx(conv_b["x"], abs=0.5)  # both at 20 ms after their own start
    assert conv_b["width"] / conv_a["width"] == pytest.approx(2, rel=0.02)  # 60 ms against 30 ms
    first, second = await page.evaluate(views)
    assert first == second

    box = await lanes.locator("[data-testid=timeline]").first.bounding_box()
    assert box is not None
    await page.mouse.move(conv_a["x"] + conv_a["width"] / 2, conv_a["y"] + conv_a["height"] / 2)
    await page.mouse.wheel(0, -600)

    async def zoomed() -> bool:
        a, b = await page.evaluate(views)
        return a == b and a["t1"] - a["t0"] < (first["t1"] - first["t0"]) / 2

    assert await until(page, zoomed)
    zoomed_in = (await page.evaluate(views))[0]
    lower = await lanes.locator("[data-testid=timeline]").nth(1).bounding_box()
    assert lower is not None
    await page.mouse.move(lower["x"] + lower["width"] / 2, lower["y"] + lower["height"] / 2)
    await page.keyboard.down("d")
    await page.wait_for_timeout(300)
    await page.keyboard.up("d")

    async def panned() -> bool:
        a, b = await page.evaluate(views)
        return a == b and a["t0"] > zoomed_in["t0"]

    assert await until(page, panned)
    await page.screenshot(path=str(SHOTS / "compare-timelines.png"), full_page=True)
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_sql_schema_results_csv_and_chart(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/sql")
    # The tables' columns beside the editor; a click types the name into the query.
    spans = page.locator("#sql-schema details").first
    await expect(spans.locator("li").first).to_be_visible()
    assert "trace_id" in await spans.locator("li button").all_text_contents()
    await page.locator("#sql-query").fill("SELECT name, duration_ns FROM spans WHERE level = 'layer' AND trace_id = '" + B
                                          + "' ORDER BY duration_ns DESC, ")
    await spans.locator("li button", has_text="span_id").first.click()
    assert (await page.locator("#sql-query").input_value()).endswith("DESC, span_id")
    await page.evaluate(COUNT_OBJECT_URLS)
    await page.locator("#sql-run").click()
    await expect(page.locator("table.sql-result tbody tr")).to_have_count(3)
    assert [r[0] for r in await table_rows(page, "table.sql-result")] == ["features.0", "features.1", EVIL]
    # A bar per row of the first numeric column, labelled by the first other column.
    await expect(page.locator("#sql-chart .mark")).to_have_count(3)
    assert f"{EVIL}: 5000000" in await page.locator("#sql-chart .mark title").all_text_contents()
    async with page.expect_download() as waiting:
        await page.locator("#sql-csv").click()
    csv = Path(await (await waiting.value).path()).read_text()
    assert csv.splitlines()[0] == '"name","duration_ns"'
    assert csv.splitlines()[1] == f'"features.0","{60 * 1_000_000}"'
    # One Blob URL, made for the download and revoked after it (a result alone makes none).
    urls = await page.evaluate("window.__objectUrls")
    assert len(urls["made"]) == 1

    async def revoked() -> bool:
        return bool(await page.evaluate("window.__objectUrls.revoked.length === 1 && "
                                        "window.__objectUrls.revoked[0] === window.__objectUrls.made[0]"))

    assert await until(page, revoked)
    await page.screenshot(path=str(SHOTS / "sql.png"), full_page=True)
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_trace_list_filters_are_bound_to_the_url(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(base_url)
    await expect(page.locator("table.traces tbody tr")).to_have_count(2)
    await page.locator("#trace-filter input[name=model]").fill(EVIL)
    await page.locator("#trace-filter select[name=level]").select_option("library")
    await page.locator("#trace-filter input[name=min_duration_ms]").fill("150")
    await page.locator("#trace-filter button").click()
    await expect(page.locator("table.traces tbody tr")).to_have_count(1)
    assert await page.locator("table.traces a.trace-link").get_attribute("href") == f"/traces/{B}"
    assert page.url.endswith("/?model=%3Cimg+src%3Dx+onerror%3Dwindow.__pwned%3D1%3E&level=library&min_duration_ns=150000000")
    await page.screenshot(path=str(SHOTS / "trace-list.png"), full_page=True)

    # The URL pasted into a new tab filters the same way and fills the form; a time window past
    # both traces matches none.
    fresh = await open_page(browser, problems)
    await fresh.goto(f"{base_url}/?service=svc-aa&min_duration_ns=1000000")
    await expect(fresh.locator("table.traces tbody tr")).to_have_count(1)
    assert await fresh.locator("#trace-filter input[name=service]").input_value() == "svc-aa"
    assert await fresh.locator("#trace-filter input[name=min_duration_ms]").input_value() == "1"
    await fresh.goto(f"{base_url}/?since_ns={T0 + 500 * MS}")
    await expect(fresh.locator("main")).to_contain_text("No traces match.")
    assert await fresh.locator("#trace-filter input[name=since]").input_value() != ""
    assert await page.evaluate("window.__pwned") is None
    assert problems == []
