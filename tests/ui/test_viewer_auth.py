"""The viewer against a service run with --auth: it asks for a read token once, keeps it for the
tab (sessionStorage, never the URL) and sends it as a bearer header on every data call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog

from mlscope.auth import parse_token_file
from mlscope.query import create_query_app
from mlscope.store import open_store
from tests.query.query_server import serve

AUTH = parse_token_file('tokens: [{token: "viewer-token", scopes: [read]}]', "tokens.yaml")


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    runner, url = await serve(create_query_app(store, auth=AUTH))
    yield url
    await runner.cleanup()
    store.close()


async def test_the_viewer_asks_for_a_token_once_then_every_page_works(browser: Browser, base_url: str) -> None:
    page = await browser.new_page()
    prompts: list[str] = []

    async def answer(dialog: Dialog) -> None:
        prompts.append(dialog.message)
        await dialog.accept("viewer-token")

    page.on("dialog", answer)
    sent: list[str | None] = []
    page.on("request", lambda request: sent.append(request.headers.get("authorization"))
            if "/api/traces" in request.url or "/api/evaluations" in request.url else None)

    await page.goto(f"{base_url}/")
    await page.wait_for_selector("main >> text=No traces", timeout=10_000)
    await page.goto(f"{base_url}/evaluations")  # a new page load: the token is still in the tab
    await page.wait_for_selector("#evaluation-filter", timeout=10_000)

    assert prompts == ["mlscope read token:"]
    assert sent[0] is None and set(sent[1:]) == {"Bearer viewer-token"}
    assert "viewer-token" not in page.url
