"""A disputed evaluation (its span sent again with the same ids and other content: schema/012) on
the evaluations and compare pages, in a real browser over the query app on an embedded store:
every copy is a row of its own, keyed by span id and content hash (a UInt64 the page keeps as
its digits), marked disputed, left out of Fig. 3 and Fig. 4 with a note saying how many, and the
compare page shows the copy picked and warns that the diff reads another."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from mlscope.dispatch import Dispatcher, dispatch_mount
from mlscope.query import create_query_app
from mlscope.store import Store
from tests.query.query_server import serve
from tests.query.trace_fixtures import insert as insert_rows
from tests.ui.test_evaluations_page import BASE, EVAL_TRACE_1, EVALUATIONS, SHOTS, evaluation_span, table_rows
from tests.ui.test_viewer import open_page

DISPUTED, PYTORCH_16 = "e400000000000004", "e500000000000005"
SENT_FIRST = replace(BASE, batch_size=16, latency_p50_ns=20_000_000)
SENT_AGAIN = replace(SENT_FIRST, latency_p50_ns=90_000_000)  # the same ids, other figures

pytestmark = [pytest.mark.parametrize("store_url", ["embedded"], indirect=True)]


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    insert_rows(store, [*EVALUATIONS, evaluation_span(DISPUTED, EVAL_TRACE_1, SENT_FIRST),
                        evaluation_span(PYTORCH_16, EVAL_TRACE_1, replace(BASE, batch_size=16, framework="pytorch",
                                                                           latency_p50_ns=30_000_000))])
    insert_rows(store, [evaluation_span(DISPUTED, EVAL_TRACE_1, SENT_AGAIN)])
    runner, url = await serve(create_query_app(store, mounts=[dispatch_mount(Dispatcher(store))]))
    try:
        yield url
    finally:
        await runner.cleanup()


async def api_rows(base_url: str) -> list[dict]:
    """GET /api/evaluations as Python reads it: content hashes as exact integers."""
    async with aiohttp.ClientSession(base_url) as session, session.get("/api/evaluations") as response:
        return json.loads(await response.text())["evaluations"]


def key(row: dict) -> str:
    return f"{row['span_id']}-{row['content_hash']}"


async def test_disputed_copies_are_rows_of_their_own_marked_and_left_out_of_the_charts(
        base_url: str, browser: Browser) -> None:
    rows = await api_rows(base_url)
    copies = [row for row in rows if row["conflict"]]
    assert sorted((row["span_id"], row["latency_p50_ns"]) for row in copies) == [
        (DISPUTED, 20_000_000), (DISPUTED, 90_000_000)]
    # A hash beyond 2^53 is what a JS number would round: these rows have one.
    assert any(row["content_hash"] > 2**53 for row in copies)
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/evaluations")
    await expect(page.locator("table.evaluations tbody tr")).to_have_count(6)
    boxes = page.locator("table.evaluations input[type=checkbox]")
    assert sorted(await boxes.evaluate_all("nodes => nodes.map(n => n.value)")) == sorted(key(row) for row in rows)
    assert [await page.locator(f"table.evaluations input[value='{key(row)}']").count() for row in rows] == [1] * 6
    # The copies are marked (as text), and only they.
    marked = [r for r in await table_rows(page, "table.evaluations") if r[0] == "disputed"]
    assert sorted(r[8] for r in marked) == ["20 ms", "90 ms"]
    assert await page.locator("table.evaluations tbody tr.disputed").count() == 2
    assert "5 evaluations (6 rows: 2 disputed copies)" in await page.locator("main").text_content()

    # Fig. 3: one point per undisputed row, none at batch 16 for onnxruntime, and the page says why.
    batch = page.locator("#figure-batch svg.chart")
    keys = await batch.locator(".mark").evaluate_all("nodes => nodes.map(n => n.dataset.key)")
    assert sorted(keys) == sorted(key(row) for row in rows if not row["conflict"])
    assert not [t for t in await batch.locator(".mark title").all_text_contents() if "90 ms" in t or "20 ms" in t]
    note = "2 disputed copies of 1 evaluation (sent again with other content) left out of this chart"
    assert note in await page.locator("#figure-batch .left-out").text_content()
    # Fig. 4 on the disputed baseline: its group is not drawn (no copy is picked as the baseline);
    # on pytorch's, the batch-16 group has pytorch alone at 1x.
    normalised = page.locator("#figure-normalised svg.chart")
    await page.locator("#figure-normalised select[name=dimension]").select_option("framework")
    await page.locator("#figure-normalised select[name=baseline]").select_option("onnxruntime")
    groups = [t.split("\n")[0] for t in await normalised.locator(".mark title").all_text_contents()]
    assert sorted(groups) == ["resnet18 · 32", "resnet18 · 8"]
    assert note in await page.locator("#figure-normalised .left-out").text_content()
    await page.locator("#figure-normalised select[name=baseline]").select_option("pytorch")
    titles = await normalised.locator(".mark title").all_text_contents()
    assert [t for t in titles if t.startswith("resnet18 · 16")] == ["resnet18 · 16\npytorch: 30 ms (1× pytorch)"]
    await page.screenshot(path=str(SHOTS / "evaluations-disputed.png"), full_page=True)

    # The two copies picked: compare shows each copy's own figures and warns on both sides.
    first, again = sorted(copies, key=lambda row: row["latency_p50_ns"])
    await page.locator(f"table.evaluations input[value='{key(first)}']").check()
    await page.locator(f"table.evaluations input[value='{key(again)}']").check()
    await page.locator("#compare-selected").click()
    await page.wait_for_url(f"{base_url}/compare?a={DISPUTED}&b={DISPUTED}"
                            f"&a_copy={first['content_hash']}&b_copy={again['content_hash']}")
    await page.locator("table.metrics").wait_for()
    metrics = {r[0]: r[1:] for r in await table_rows(page, "table.metrics")}
    assert metrics["p50 latency"] == ["20 ms", "90 ms", "4.5×"]
    warnings = await page.locator(".disputed-warning").all_text_contents()
    assert [w[:2] for w in warnings] == ["a:", "b:"]
    assert f"Its metrics here are copy {first['content_hash']} (the one picked)" in warnings[0]
    assert f"Its metrics here are copy {again['content_hash']} (the one picked)" in warnings[1]
    assert all("the timelines and the diff read the copy its trace's timeline keeps" in w for w in warnings)
    await page.screenshot(path=str(SHOTS / "compare-disputed.png"), full_page=True)
    assert problems == []


async def test_compare_warns_only_for_the_disputed_side_and_the_picker_names_copies(
        base_url: str, browser: Browser) -> None:
    rows = await api_rows(base_url)
    listed_first = next(row for row in rows if row["conflict"])
    undisputed = next(row for row in rows if row["span_id"] == PYTORCH_16)
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/compare?a={DISPUTED}&b={PYTORCH_16}")
    await page.locator("table.metrics").wait_for()
    warnings = await page.locator(".disputed-warning").all_text_contents()
    assert len(warnings) == 1 and warnings[0].startswith(f"a: evaluation {DISPUTED} is disputed")
    assert f"copy {listed_first['content_hash']} (the first listed)" in warnings[0]
    metrics = {r[0]: r[1:] for r in await table_rows(page, "table.metrics")}
    assert metrics["p50 latency"][:2] == [f"{listed_first['latency_p50_ns'] // 1_000_000} ms", "30 ms"]
    # An undisputed pair: no warning.
    await page.goto(f"{base_url}/compare?a={PYTORCH_16}&b={undisputed['span_id']}")
    await page.locator("table.metrics").wait_for()
    assert await page.locator(".disputed-warning").count() == 0

    # The picker lists each copy apart, and picking one carries its hash.
    await page.goto(f"{base_url}/compare")
    await page.locator("#compare-pick").wait_for()
    options = page.locator("#compare-pick select[name=a] option")
    labels = await options.all_text_contents()
    assert sorted(label.split("disputed copy ")[-1] for label in labels if "disputed copy" in label) == sorted(
        str(row["content_hash"]) for row in rows if row["conflict"])
    again = next(row for row in rows if row["conflict"] and row["latency_p50_ns"] == 90_000_000)
    await page.locator("#compare-pick select[name=a]").select_option(key(again))
    await page.locator("#compare-pick select[name=b]").select_option(key(undisputed))
    await page.locator("#compare-pick button").click()
    await page.wait_for_url(f"{base_url}/compare?a={DISPUTED}&b={PYTORCH_16}&a_copy={again['content_hash']}")
    await page.locator("table.metrics").wait_for()
    assert {r[0]: r[1:] for r in await table_rows(page, "table.metrics")}["p50 latency"][:2] == ["90 ms", "30 ms"]
    assert problems == []


async def test_content_hash_is_kept_as_its_digits(base_url: str, browser: Browser) -> None:
    page = await open_page(browser, [])
    await page.goto(f"{base_url}/sql")
    await page.locator("#sql-query").wait_for()  # rendered: window.mlscopeViewer is set
    parsed = await page.evaluate("""() => {
      const row = window.mlscopeViewer.parseJson('{"span_id": "e4", "content_hash": 18446744073709551615, "n": 7}');
      return [row.content_hash, typeof row.content_hash, window.mlscopeViewer.evaluationKey(row), row.n];
    }""")
    assert parsed == ["18446744073709551615", "string", "e4-18446744073709551615", 7]
