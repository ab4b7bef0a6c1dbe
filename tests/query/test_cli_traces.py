"""`mlscope analyze` and `mlscope diff` against a served query app (embedded store only: the
routes' backends are covered in test_analysis.py and test_diff.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mlscope.cli.main import main
from mlscope.query import create_query_app
from mlscope.store import open_store
from tests.query.model_trace import RUN_TRACE, model_run
from tests.query.query_server import serve
from tests.query.trace_fixtures import insert

OTHER = "0000000000000000000000000000b002"


@pytest.fixture
async def url(tmp_path):
    store = open_store(f"embedded://{tmp_path / 'store'}")
    insert(store, model_run() + model_run(OTHER, conv_ms=11, extra_layer=True))
    runner, base_url = await serve(create_query_app(store))
    yield base_url
    await runner.cleanup()
    store.close()


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_analyze_table_and_json(url, capsys) -> None:
    assert await run_cli("analyze", RUN_TRACE, "--url", url) == 0
    table = capsys.readouterr().out
    assert "critical path" in table and "block.conv" in table and "aten::conv2d" in table
    assert await run_cli("analyze", RUN_TRACE, "--url", url, "--format", "json") == 0
    body = json.loads(capsys.readouterr().out)
    assert body["critical_path"][-1]["name"] == "aten::conv2d"


async def test_diff_table(url, capsys) -> None:
    assert await run_cli("diff", RUN_TRACE, OTHER, "--url", url) == 0
    out = capsys.readouterr().out
    assert "layers only in A" in out and "relu" in out and "layers only in B" in out and "fc" in out


@pytest.mark.parametrize("argv", [("analyze", "nothex"), ("analyze", "f" * 32), ("diff", RUN_TRACE, "xyz")])
async def test_bad_input_is_one_line_and_exit_2(url, capsys, argv) -> None:
    assert await run_cli(*argv, "--url", url) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlscope: ") and err.count("\n") == 1
