"""`mlscope analyze`, `mlscope diff` and `mlscope export` against a served query app (embedded store only: the
routes' backends are covered in test_analysis.py and test_diff.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mlscope.cli.main import main
from mlscope.query import create_query_app
from mlscope.query.export import EXPORTERS
from mlscope.query.timeline import build_timeline
from mlscope.store import open_store
from tests.query.model_trace import RUN_TRACE, model_run
from tests.query.query_server import serve
from tests.query.trace_fixtures import insert, spans

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


async def test_export_to_a_file_and_to_stdout(url, tmp_path, capsysbinary) -> None:
    stored = build_timeline(RUN_TRACE, spans(model_run()))
    target = tmp_path / "run.pftrace"
    assert await run_cli("export", RUN_TRACE.upper(), "--url", url, "-o", str(target)) == 0
    assert target.read_bytes() == EXPORTERS["perfetto-proto"].render(stored, [])
    assert capsysbinary.readouterr().err == f"mlscope: wrote {target.stat().st_size} bytes to {target}\n".encode()
    assert await run_cli("export", RUN_TRACE, "--url", url, "--format", "jaeger") == 0
    assert capsysbinary.readouterr().out == EXPORTERS["jaeger"].render(stored, [])


@pytest.mark.parametrize("argv", [("analyze", "nothex"), ("analyze", "f" * 32), ("diff", RUN_TRACE, "xyz"),
                                  ("export", RUN_TRACE, "--format", "zipkin"), ("export", "f" * 32),
                                  ("export", RUN_TRACE, "-o", "/nonexistent/dir/trace.pftrace")])
async def test_bad_input_is_one_line_and_exit_2(url, capsys, argv) -> None:
    assert await run_cli(*argv, "--url", url) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlscope: ") and err.count("\n") == 1
