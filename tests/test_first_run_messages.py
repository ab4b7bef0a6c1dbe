"""What a new user sees on a first mistake: one line that says what to do instead."""

from __future__ import annotations

import pytest

from mlscope.cli.main import main
from mlscope.client import ServiceClient


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
