"""A corrupt ONNX or TorchScript file (its sha256 matches: the manifest names this very file) in
a local `mlscope evaluate`: one line naming the file and the library's reason, exit 2, no
traceback (issue 11, finding 11's left-over)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.e2e.served_process import REPO, Served
from tests.evaluation.test_evaluate_command import evaluate


# (the manifest's framework, --framework, the file's format, its name in the message)
@pytest.mark.parametrize("manifest_framework, framework, format_name, kind", [
    ("onnxruntime", "onnxruntime", "onnx", "ONNX"), ("pytorch", "torchscript", "torchscript", "TorchScript")])
def test_a_corrupt_model_file_is_one_line_and_exit_2(served: Served, tmp_path: Path, manifest_framework: str,
                                                      framework: str, format_name: str, kind: str) -> None:
    model = tmp_path / f"model.{format_name}"
    model.write_bytes(b"garbage, not a model")
    manifest = tmp_path / "corrupt.yaml"
    manifest.write_text((REPO / "manifests" / "digits.yaml").read_text()
                        .replace("framework: {name: pytorch, version: \">=2.0\"}", f"framework: {{name: {manifest_framework}}}")
                        .replace("  builder: mlscope.manifests.models:digits_mlp\n  train: {epochs: 30, learning_rate: 0.003, seed: 0}",
                                 f"  path: {model}\n  format: {format_name}\n  sha256: {hashlib.sha256(model.read_bytes()).hexdigest()}"))
    refused = evaluate(served, tmp_path, str(manifest), "--framework", framework)
    assert refused.returncode == 2, refused.stderr
    line, = refused.stderr.strip().splitlines()
    assert line.startswith(f"mlscope: {manifest}: model: the {kind} file ") and "cannot be loaded (" in line
    assert "Traceback" not in refused.stderr
