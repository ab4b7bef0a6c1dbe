"""Manifest loading: the built-ins load, and each kind of mistake is one ManifestError naming
the file, the field and the reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlscope.manifests import ManifestError, builtin_manifests, load_manifest, parse_manifest
from mlscope.manifests.model import Step

VALID: dict[str, Any] = {
    "name": "tiny", "version": "1.0.0", "task": "image-classification",
    "framework": {"name": "pytorch", "version": ">=2.0"},
    "model": {"builder": "mlscope.manifests.models:digits_mlp"},
    "inputs": [{"name": "pixels", "shape": [64], "preprocess": [{"scale": {"factor": 0.5}}, "flatten"]}],
    "outputs": [{"name": "logits", "postprocess": ["softmax", {"top-k": {"k": 5}}]}],
    "dataset": {"name": "digits", "samples": 10},
}
SHA = "ab" * 32


def changed(path: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted `path` set to `value` (or removed, for ...)."""
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target: Any = data
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


def test_builtin_manifests_load() -> None:
    names = set(builtin_manifests())
    assert {"alexnet", "resnet18", "mobilenet_v2", "bert_tiny", "digits"} <= names
    for name in names:
        manifest = load_manifest(name)
        assert manifest.name == name and manifest.framework.name == "pytorch"
    assert load_manifest("resnet18").input.steps[0] == Step("resize", {"size": (224, 224)})


def test_a_valid_manifest_gets_defaults() -> None:
    manifest = parse_manifest(VALID, "m.yaml")
    assert manifest.input.dtype == "float32" and manifest.dataset.split == "test"
    assert manifest.output.steps == (Step("softmax", {}), Step("top-k", {"k": 5}))
    assert manifest.predictors == ("pytorch", "torchscript", "onnxruntime")


@pytest.mark.parametrize(
    "data, field, reason",
    [
        (changed("name", ...), "name", "missing required field"),
        (changed("version", 1.0), "version", "expected a string, got a number 1.0"),
        (changed("framework.name", "tensorflow"), "framework.name", "unknown name 'tensorflow'"),
        (changed("framework.version", ">=two"), "framework.version", "bad version constraint '>=two'"),
        (changed("model", {"url": "https://example.com/m.onnx", "sha256": "abc", "format": "onnx"}),
         "model.sha256", "bad checksum format 'abc'"),
        (changed("model", {"path": "m.onnx", "sha256": SHA.upper(), "format": "onnx"}), "model.sha256",
         "bad checksum format"),
        (changed("model", {"path": "m.onnx", "format": "onnx"}), "model.sha256", "missing required field"),
        (changed("model", {"url": "ftp://x/m.onnx", "sha256": SHA, "format": "onnx"}), "model.url", "http"),
        (changed("model", {"path": "m.onnx", "sha256": SHA, "format": "onnx"}), "model.format", "onnxruntime"),
        (changed("model", {"builder": "nocolon"}), "model.builder", "'package.module:function'"),
        (changed("model", {}), "model", "exactly one of builder, path or url"),
        (changed("model.train", {"epochs": 0, "learning_rate": 0.1}), "model.train.epochs", "must be positive"),
        (changed("task", "segmentation"), "task", "unknown task"),
        (changed("inputs", []), "inputs", "exactly one entry"),
        (changed("inputs.0.shape", [3, "224"]), "inputs[0].shape", "positive integers"),
        (changed("inputs.0.preprocess", ["blur"]), "inputs[0].preprocess[0]", "unknown step 'blur'"),
        (changed("inputs.0.preprocess", [{"resize": {"size": [224]}}, {"resize": {"width": 3}}]),
         "inputs[0].preprocess[1].resize.width", "unknown field"),
        (changed("inputs.0.preprocess", [{"normalize": {"mean": [0.5], "std": "x"}}]),
         "inputs[0].preprocess[0].normalize.std", "expected a list"),
        (changed("outputs.0.postprocess", [{"top-k": {}}]), "outputs[0].postprocess[0].top-k.k", "missing"),
        (changed("dataset.name", "imagenet"), "dataset.name", "unknown name 'imagenet'"),
        (changed("dataset.samples", True), "dataset.samples", "expected an integer, got a boolean"),
        (changed("colour", "red"), "colour", "unknown field"),
        (changed("attributes", {"k": [1]}), "attributes.k", "expected a string, number or boolean"),
    ],
)
def test_each_mistake_is_one_error_naming_file_and_field(data: dict, field: str, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "bad.yaml")
    assert (caught.value.source, caught.value.field) == ("bad.yaml", field)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"bad.yaml: {field}: ")


def test_files_env_substitution_and_yaml_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(changed("version", "${MODEL_VERSION:-2.0.0}")))
    assert load_manifest(path, environ={}).version == "2.0.0"
    assert load_manifest(path, environ={"MODEL_VERSION": "3.1.0"}).version == "3.1.0"
    path.write_text(yaml.safe_dump(changed("version", "${MODEL_VERSION}")))
    with pytest.raises(ManifestError, match=r"m\.yaml: environment variable MODEL_VERSION is not set"):
        load_manifest(path, environ={})
    path.write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match=r"m\.yaml: not valid YAML"):
        load_manifest(path)
    with pytest.raises(ManifestError, match=r"missing\.yaml: cannot read"):
        load_manifest(tmp_path / "missing.yaml")
