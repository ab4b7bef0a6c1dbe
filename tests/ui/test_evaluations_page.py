"""The evaluations page and the compare page in a real browser (Debian's Chromium via
Playwright) over the query app on an embedded store: the evaluations table and its deep-linkable
filter and charts, evaluation-vs-evaluation compare, and hostile names shown as text.

Evaluation rows are made the way the product makes them: `mlscope.evaluation` spans inserted
into span_rows, which the materialized view turns into `evaluations` rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from mlscope.evaluation.results import SPAN_NAME, EvaluationResult
from mlscope.dispatch import Dispatcher, dispatch_mount
from mlscope.query import create_query_app
from mlscope.store import Store
from tests.query.query_server import serve
from tests.ui.test_viewer import open_page
from tests.query.trace_fixtures import KNOWN, row
from tests.query.trace_fixtures import insert as insert_rows

SHOTS = Path(__file__).parent / "artifacts"
EVIL = "<img src=x onerror=window.__pwned=1>"
TRACE_A = KNOWN[0]["trace_id"]
TRACE_B = "0123456789abcdef0123456789abcdef"
EVAL_TRACE_1, EVAL_TRACE_2 = "e1" * 16, "e2" * 16
EVAL_1, EVAL_2, EVAL_3 = "e100000000000001", "e200000000000002", "e300000000000003"

BASE = EvaluationResult(
    run_id="r1", model="resnet18", model_version="1.0.0", task="image-classification", framework="onnxruntime",
    framework_version="1.32.0", execution_provider="CPUExecutionProvider", system="0123456789abcdef",
    system_name="host", system_description="2 CPUs", batch_size=8, scenario="offline", level="model", queries=20,
    samples=160, latency_mean_ns=1.5e7, latency_p50_ns=14_000_000, latency_p90_ns=18_000_000,
    latency_p99_ns=21_000_000, throughput=512.25, accuracy_top1=0.96, accuracy_top5=1.0, accuracy_samples=450,
    server_qps=None, server_bound_ns=None, server_bound_met=None, divergence_reference="pytorch",
    divergence_samples=32, divergence_max_abs_diff=3.5e-06, divergence_top1_agreement=1.0,
)


def evaluation_span(span_id: str, trace_id: str, result: EvaluationResult) -> dict[str, Any]:
    """One `mlscope.evaluation` span as the collector writes it: attribute values as strings."""
    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)
    return row(span_id, "", SPAN_NAME, 0, 1000, "application", trace_id=trace_id, service="mlscope-evaluate",
               attributes={k: text(v) for k, v in result.span_attributes().items()})


EVALUATIONS = [
    evaluation_span(EVAL_1, EVAL_TRACE_1, BASE),
    evaluation_span(EVAL_2, EVAL_TRACE_1, EvaluationResult(**{
        **BASE.__dict__, "batch_size": 32, "latency_p50_ns": 28_000_000, "throughput": 1024.5})),
    evaluation_span(EVAL_3, EVAL_TRACE_2, EvaluationResult(**{
        **BASE.__dict__, "model": EVIL, "framework": "pytorch", "framework_version": "2.5"})),
]

pytestmark = [pytest.mark.parametrize("store_url", ["embedded"], indirect=True)]


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    insert_rows(store, EVALUATIONS)
    runner, url = await serve(create_query_app(store, mounts=[dispatch_mount(Dispatcher(store))]))
    try:
        yield url
    finally:
        await runner.cleanup()


async def table_rows(page, selector: str) -> list[list[str]]:
    rows = page.locator(f"{selector} tbody tr")
    return [await rows.nth(i).locator("td").all_text_contents() for i in range(await rows.count())]


async def test_evaluations_table_filter_deep_link_and_hostile_model(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/evaluations")
    await expect(page.locator("table.evaluations tbody tr")).to_have_count(3)
    # Ordered by model, framework, batch size; the hostile model name is text.
    rows = await table_rows(page, "table.evaluations")
    assert [r[1:] for r in rows] == [
        [EVIL, "1.0.0", "pytorch", "CPUExecutionProvider", "8", "offline", "model", "14 ms", "18 ms", "21 ms",
         "512.3", "0.96", "host", "—", "trace"],
        ["resnet18", "1.0.0", "onnxruntime", "CPUExecutionProvider", "8", "offline", "model", "14 ms", "18 ms",
         "21 ms", "512.3", "0.96", "host", "—", "trace"],
        ["resnet18", "1.0.0", "onnxruntime", "CPUExecutionProvider", "32", "offline", "model", "28 ms", "18 ms",
         "21 ms", "1025", "0.96", "host", "—", "trace"],
    ]
    assert await page.locator("table.evaluations a.trace-link").nth(0).get_attribute("href") == f"/traces/{EVAL_TRACE_2}"
    assert await page.locator("main img").count() == 0
    await page.screenshot(path=str(SHOTS / "evaluations.png"), full_page=True)

    # Filtering writes the URL; the URL pasted into a new tab filters the same way.
    await page.locator("input[name=model]").fill("resnet18")
    await page.locator("input[name=batch_size]").fill("32")
    await page.locator("#evaluation-filter button").click()
    await expect(page.locator("table.evaluations tbody tr")).to_have_count(1)
    assert page.url == f"{base_url}/evaluations?model=resnet18&batch_size=32"
    fresh = await open_page(browser, problems)
    await fresh.goto(f"{base_url}/evaluations?framework=onnxruntime&batch_size=8")
    await expect(fresh.locator("table.evaluations tbody tr")).to_have_count(1)
    assert await fresh.locator("input[name=framework]").input_value() == "onnxruntime"
    assert await fresh.locator("input[name=batch_size]").input_value() == "8"
    assert (await table_rows(fresh, "table.evaluations"))[0][1:6] == [
        "resnet18", "1.0.0", "onnxruntime", "CPUExecutionProvider", "8"]

    # Two picked rows link to their compare page.
    await page.goto(f"{base_url}/evaluations")
    await expect(page.locator("table.evaluations tbody tr")).to_have_count(3)
    await page.locator(f"input[value^='{EVAL_1}-']").check()
    await page.locator(f"input[value^='{EVAL_2}-']").check()
    await page.locator("#compare-selected").click()
    await page.wait_for_url(f"{base_url}/compare?a={EVAL_1}&b={EVAL_2}")
    await page.locator("table.metrics").wait_for()
    metrics = {r[0]: r[1:] for r in await table_rows(page, "table.metrics")}
    assert metrics["p50 latency"] == ["14 ms", "28 ms", "2×"]
    assert metrics["throughput"] == ["512.3", "1025", "2×"]
    assert metrics["server QPS"] == ["—", "—", "—"]
    config = {r[0]: r[1:] for r in await table_rows(page, "table.config")}
    assert config["batch size"] == ["8", "32"]
    # Each evaluation's own subtree is drawn (one span here) and diffed (GET /api/diff on evaluation ids).
    await expect(page.locator('[data-testid=compare-timelines] [data-testid=timeline][data-ready="1"]')).to_have_count(2)
    assert [r[0] for r in await table_rows(page, "table.diff-levels")] == ["application"]
    await page.screenshot(path=str(SHOTS / "compare-evaluations.png"), full_page=True)
    assert await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_evaluation_charts_link_points_to_traces_and_pick_two(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/evaluations")
    batch = page.locator("#figure-batch svg.chart")
    # Fig. 3: one line per framework-and-model, a point per batch size; tooltips are text.
    await expect(batch.locator(".mark")).to_have_count(3)
    assert sorted(await batch.locator(".legend title").all_text_contents()) == sorted([f"{EVIL} · pytorch", "resnet18 · onnxruntime"])
    titles = await batch.locator(".mark title").all_text_contents()
    assert "resnet18 · onnxruntime\nbatch 32: p50 latency 28 ms" in titles
    # Fig. 4 across frameworks (one system here): resnet18 at batch 8 on pytorch is not in the
    # data, so only the onnxruntime baselines themselves are drawn, at 1x.
    normalised = page.locator("#figure-normalised svg.chart")
    await page.locator("#figure-normalised select[name=dimension]").select_option("framework")
    await page.locator("#figure-normalised select[name=baseline]").select_option("onnxruntime")
    assert [t.split("(")[-1] for t in await normalised.locator(".mark title").all_text_contents()] == [
        "1× onnxruntime)", "1× onnxruntime)"]
    await page.locator("#figure-batch select[name=metric]").select_option("throughput")
    assert "resnet18 · onnxruntime\nbatch 32: throughput 1025" in await batch.locator(".mark title").all_text_contents()
    await page.screenshot(path=str(SHOTS / "evaluations-charts.png"), full_page=True)

    # Shift-click picks two points for compare (the table's boxes follow); a plain click opens the trace.
    await batch.locator(f".mark[data-key^='{EVAL_1}-']").click(modifiers=["Shift"])
    await batch.locator(f".mark[data-key^='{EVAL_2}-']").click(modifiers=["Shift"])
    assert await page.locator(f"input[value^='{EVAL_2}-']").is_checked()
    assert await page.locator("#compare-selected").get_attribute("href") == f"/compare?a={EVAL_1}&b={EVAL_2}"
    await batch.locator(f".mark[data-key^='{EVAL_2}-']").click()
    await page.wait_for_url(f"{base_url}/traces/{EVAL_TRACE_1}")
    assert await page.evaluate("window.__pwned") is None
    assert problems == []


async def test_compare_transforms_are_pure(base_url: str, browser: Browser) -> None:
    page = await open_page(browser, [])
    await page.goto(f"{base_url}/sql")
    await page.locator("#sql-query").wait_for()  # rendered: the conventions are loaded
    viewer = "window.mlscopeViewer"
    assert await page.evaluate(f"{viewer}.evaluationFilterQuery({viewer}.parseEvaluationFilter("
                               "'?batch_size=4&x=1&model=a%20b&framework='))") == "?model=a+b&batch_size=4"
    assert await page.evaluate(f"{viewer}.compareKind('{TRACE_A}', '{TRACE_B}')") == "trace"
    assert await page.evaluate(f"{viewer}.compareKind('{EVAL_1}', '{EVAL_2}')") == "evaluation"
    assert await page.evaluate(f"{viewer}.compareKind('{EVAL_1}', '{TRACE_B}')") == "mixed"
    assert await page.evaluate(f"{viewer}.compareKind('{EVAL_1}', 'x')") is None
    rows = [{"key": "x", "a_ns": 10, "b_ns": 5, "delta_ns": -5, "ratio": 0.5},
            {"key": "y", "a_ns": 1, "b_ns": 3, "delta_ns": 2, "ratio": 3.0},
            {"key": "z", "a_ns": 0, "b_ns": 9, "delta_ns": 9, "ratio": None}]
    by = "([rows, column, descending]) => window.mlscopeViewer.sortDiffRows(rows, column, descending).map(r => r.key)"
    assert await page.evaluate(by, [rows, "delta_ns", True]) == ["z", "x", "y"]  # by |delta|
    assert await page.evaluate(by, [rows, "ratio", True]) == ["y", "x", "z"]  # no ratio last


async def test_predictors_and_their_jobs_are_listed(base_url: str, browser: Browser) -> None:
    from mlscope.manifests import read_manifest

    source, text = read_manifest("digits")
    async with aiohttp.ClientSession(base_url) as session:
        for predictor_id, name, labels in (("a" * 32, "gpu-box", {"gpu": "h200"}), ("b" * 32, EVIL, {})):
            heartbeat = {"predictor_id": predictor_id, "name": name, "host": "h", "pid": 1, "started_ns": 1,
                         "system": {"fingerprint": "0123456789abcdef", "name": "host", "description": ""},
                         "execution_providers": ["pytorch/cpu"], "labels": labels}
            async with session.post("/api/predictors", json=heartbeat) as response:
                assert response.status == 200
        request = {"manifests": [{"source": source, "text": text}], "where": {"gpu": "h200"},
                   "plan": {"frameworks": ["pytorch"], "batch_sizes": [1]}}
        async with session.post("/api/jobs", json=request) as response:
            assert response.status == 201
            queued = await response.json()

    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/evaluations")
    await expect(page.locator("table.predictors tbody tr")).to_have_count(2)
    predictors = {r[0]: r[1:5] for r in await table_rows(page, "table.predictors")}
    assert predictors == {"gpu-box": ["host (0123456789abcdef)", "pytorch/cpu", "gpu=h200", "alive"],
                          EVIL: ["host (0123456789abcdef)", "pytorch/cpu", "—", "alive"]}
    jobs = await table_rows(page, "table.jobs")
    assert [r[:6] for r in jobs] == [[queued["jobs"][0]["job_id"][:8], queued["run_id"][:8], "gpu-box", "queued", "0", "—"]]
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.__pwned") is None
    assert problems == []


async def mark_centre(page, selector: str) -> tuple[float, float]:
    """A point's centre in the chart's own units (the SVG is scaled to the page's width)."""
    locator = page.locator(selector)
    return float(await locator.get_attribute("cx")), float(await locator.get_attribute("cy"))


async def test_chart_choices_in_the_url_and_shared_points_reachable(base_url: str, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, problems)
    await page.goto(f"{base_url}/evaluations")
    await page.locator("#figure-batch select[name=metric]").select_option("throughput")
    await page.locator("#figure-normalised select[name=dimension]").select_option("framework")
    await page.locator("#figure-normalised select[name=baseline]").select_option("pytorch")
    assert page.url == f"{base_url}/evaluations?metric=throughput&dimension=framework&baseline=pytorch"
    await page.reload()
    batch = page.locator("#figure-batch svg.chart")
    await expect(batch.locator(".mark")).to_have_count(3)
    assert await page.locator("#figure-batch select[name=metric]").input_value() == "throughput"
    assert await page.locator("#figure-normalised select[name=dimension]").input_value() == "framework"
    assert await page.locator("#figure-normalised select[name=baseline]").input_value() == "pytorch"
    assert "resnet18 · onnxruntime\nbatch 32: throughput 1025" in await batch.locator(".mark title").all_text_contents()

    # EVAL_1 and EVAL_3 are the same point (batch 8, throughput 512.25): drawn apart, near it,
    # each one clickable (Playwright clicks only a mark nothing covers) and told so in its tooltip.
    one, three = f"#figure-batch .mark[data-key^='{EVAL_1}-']", f"#figure-batch .mark[data-key^='{EVAL_3}-']"
    (x1, y1), (x3, y3) = await mark_centre(page, one), await mark_centre(page, three)
    assert 10 <= ((x1 - x3) ** 2 + (y1 - y3) ** 2) ** 0.5 <= 20  # two radii apart at least, close to the point
    assert "(one of 2 at this point" in await page.locator(f"{one} title").text_content()
    await page.locator(three).click(modifiers=["Shift"], timeout=5000)
    await page.locator(one).click(modifiers=["Shift"], timeout=5000)
    assert await page.locator("#compare-selected").get_attribute("href") == f"/compare?a={EVAL_3}&b={EVAL_1}"
    await page.screenshot(path=str(SHOTS / "evaluations-shared-point.png"), full_page=True)

    # Filtering keeps the charts' choices.
    await page.locator("input[name=framework]").fill("onnxruntime")
    await page.locator("#evaluation-filter button").click()
    await page.wait_for_url(f"{base_url}/evaluations?framework=onnxruntime&metric=throughput&dimension=framework&baseline=pytorch")
    await expect(page.locator("table.evaluations tbody tr")).to_have_count(2)
    assert await page.locator("#figure-batch select[name=metric]").input_value() == "throughput"

    # Bars of one series in one group (two runs of one configuration) share the bar's place.
    rects = await page.evaluate("""() => {
      const bar = (key) => ({ series: 0, value: 1, title: key, key, href: null });
      const svg = window.mlscopeCharts.barChart([{ name: "g", bars: [bar("x"), bar("y")] }], ["s"], {
        title: "t", xLabel: "x", yLabel: "y", yFormat: String });
      return [...svg.querySelectorAll("rect.mark")].map((r) => [Number(r.getAttribute("x")), Number(r.getAttribute("width"))]);
    }""")
    assert len(rects) == 2 and rects[0][0] + rects[0][1] <= rects[1][0]
    assert problems == []
