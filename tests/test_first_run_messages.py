"""What a new user sees on a first mistake: one line that says what to do instead."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from mlscope.cli.main import main
from mlscope.client import ServiceClient
from tests.e2e.served_process import REPO, start_mlscope


def test_a_misspelt_level_lists_the_levels_and_help_does_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--level", "libary", "--", "python", "app.py"])
    assert exited.value.code == 2
    assert "unknown level 'libary': expected one of application, model, layer, library, hardware" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "application, model, layer, library," in capsys.readouterr().out


def test_an_unknown_model_lists_the_built_in_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "resnet19"])
    assert exited.value.code == 2
    assert "'resnet19' is neither a manifest file nor a built-in model (built-in: alexnet," in capsys.readouterr().err


def test_report_with_an_unknown_baseline_says_so(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"model": "resnet18", "system": "0123456789abcdef", "system_name": "box", "batch_size": 1}]
    monkeypatch.setattr(ServiceClient, "get", lambda self, path, params=None: {"evaluations": rows})
    assert main(["report", "--model", "resnet18", "--url", "http://127.0.0.1:9", "--baseline", "nobox"]) == 2
    assert capsys.readouterr().err == ("mlscope: no evaluations of model 'resnet18' on system 'nobox'; "
                                       "its systems: 0123456789abcdef, box\n")


def test_an_unreachable_store_is_one_line_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "--store", "clickhouse://127.0.0.1:1/mlscope", "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlscope: store error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_sql_on_an_embedded_store_serve_holds_suggests_url(tmp_path) -> None:
    store_url = f"embedded://{tmp_path / 'store'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, store_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        result = subprocess.run([sys.executable, "-m", "mlscope", "sql", "--store", store_url, "SELECT 1"],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        holder.communicate("", timeout=60)
    # chdb itself prints the lock's exception (from C++) before mlscope's line.
    last = result.stderr.splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert last.startswith("mlscope: store error: cannot open embedded store ")
    assert last.endswith('to query it while serve runs, ask its API: mlscope sql --url http://127.0.0.1:8765 "QUERY"')


HOLD_STORE = """
import sys
from mlscope.store import open_store
store = open_store(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
store.close()
"""


def test_the_demo_takes_the_default_otlp_port_only_when_it_is_free() -> None:
    from mlscope.cli.main import _free_or_any

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert _free_or_any("127.0.0.1", taken.getsockname()[1]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert _free_or_any("127.0.0.1", free) == free


def test_the_demo_prints_the_run_line_for_its_collector(tmp_path) -> None:
    process, ports = start_mlscope(["demo", "--store", f"embedded://{tmp_path / 'store'}", "--port", "0"],
                                   tmp_path, ("http", "otlp-http"))
    try:
        for line in process.stdout:
            if line.startswith("trace your program: "):
                break
    finally:
        process.terminate()
        process.communicate(timeout=60)
    assert line == (f"trace your program: mlscope run --endpoint http://127.0.0.1:{ports['otlp-http']} "
                    "-- python app.py\n")
