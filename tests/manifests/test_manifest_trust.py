"""Hostile manifests, pure: a YAML bomb, an oversized or too-deep text, a huge value are refused
fast with a short message; a manifest from the network names no code (only built-in or allowed
builders, no path) and reaches no private address."""

from __future__ import annotations

import importlib
import time

import pytest

from mlscope.manifests import (
    BUILTIN_BUILDERS, LOCAL_SOURCES, AssetCache, ManifestError, ModelSources, check_model_sources, load_manifest,
    manifest_from_text, read_manifest, torch_weights,
)
from mlscope.manifests.trust import MAX_ERROR_CHARS, MAX_MANIFEST_SIZE, SourceRefused, is_private_address

DIGITS_SOURCE, DIGITS_TEXT = read_manifest("digits")
# A few hundred bytes like these once became a 663 MB error message and 13.6 s on the event loop.
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + level)}: &{chr(98 + level)} [{', '.join(['*' + chr(97 + level)] * 9)}]" for level in range(8)]
    + ["name: *i"])


def refused(text: str) -> str:
    started = time.monotonic()
    with pytest.raises(ManifestError) as caught:
        manifest_from_text("job.yaml", text)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert len(message) <= MAX_ERROR_CHARS + 100, len(message)
    return message


def test_a_yaml_bomb_is_refused_fast_with_a_short_message() -> None:
    assert len(BILLION_LAUGHS) < 700
    assert "aliases (*a) are not allowed in a manifest (line 2)" in refused(BILLION_LAUGHS)


@pytest.mark.parametrize(("text", "reason"), [
    ("name: x\n" + "#" * MAX_MANIFEST_SIZE, f"larger than {MAX_MANIFEST_SIZE} characters"),
    ("[" * 20_000 + "]" * 20_000, "exceeded maximum nesting depth"),
    ("name: " + "9" * 20_000, "not valid YAML"),
    ("name: [" + ", ".join(["'" + "x" * 1000 + "'"] * 50) + "]", "name: expected a string, got a list ['xxxx"),
    (DIGITS_TEXT.replace('version: "1.0.0"', "version: {" + ", ".join(f"k{index}: v" for index in range(5000)) + "}"),
     "version: expected a string, got a mapping {'k0': 'v'"),
])
def test_hostile_texts_are_refused_with_a_bounded_message(text: str, reason: str) -> None:
    assert reason in refused(text)


def test_builtin_builders_are_the_architectures_mlscope_ships() -> None:
    models = importlib.import_module("mlscope.manifests.models")
    for builder in BUILTIN_BUILDERS:
        module, function = builder.split(":")
        assert module == models.__name__ and callable(getattr(models, function))
    for name in ("alexnet", "resnet18", "mobilenet_v2", "bert_tiny", "digits"):
        check_model_sources(load_manifest(name), ModelSources.remote())


def test_a_remote_manifest_names_no_code_and_no_path() -> None:
    remote = ModelSources.remote()
    abort = manifest_from_text("job.yaml", DIGITS_TEXT.replace("mlscope.manifests.models:digits_mlp", "os:abort"))
    with pytest.raises(ManifestError, match=r"job.yaml: model.builder: builder 'os:abort' is not allowed .*--allow-builder"):
        check_model_sources(abort, remote)
    check_model_sources(abort, ModelSources.remote(["os:abort"]))  # the predictor's owner said so
    check_model_sources(abort, LOCAL_SOURCES)  # the user's own file: their code
    by_path = manifest_from_text("job.yaml", DIGITS_TEXT.replace(
        "builder: mlscope.manifests.models:digits_mlp", f"path: /etc/passwd\n  sha256: '{'0' * 64}'\n  format: onnx")
        .replace("name: pytorch", "name: onnxruntime").replace("  train: {epochs: 30, learning_rate: 0.003, seed: 0}\n", ""))
    with pytest.raises(ManifestError, match="model.path: a model path is not allowed .*--allow-path"):
        check_model_sources(by_path, remote)
    check_model_sources(by_path, ModelSources.remote(paths=True))


def test_building_a_refused_builder_imports_nothing(tmp_path) -> None:
    # Were os.abort called, this test process would die.
    abort = manifest_from_text("job.yaml", DIGITS_TEXT.replace("mlscope.manifests.models:digits_mlp", "os:abort"))
    with pytest.raises(ManifestError, match="model.builder: builder 'os:abort' is not allowed"):
        torch_weights(abort, AssetCache(tmp_path, sources=ModelSources.remote()))


@pytest.mark.parametrize(("address", "private"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.1", True), ("169.254.169.254", True), ("::1", True),
    ("fe80::1%eth0", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", True), ("240.0.0.1", True), ("224.0.0.1", True),
    ("93.184.216.34", False), ("2606:4700::1111", False),
])
def test_private_addresses(address: str, private: bool) -> None:
    assert is_private_address(address) is private


def test_every_resolved_address_must_be_public() -> None:
    remote = ModelSources.remote()
    remote.check_host("models.example", lambda host: ["93.184.216.34"])
    with pytest.raises(SourceRefused, match=r"models.example is a private, loopback or reserved address \(10.0.0.5\)"):
        remote.check_host("models.example", lambda host: ["93.184.216.34", "10.0.0.5"])
    ModelSources.remote(private_urls=True).check_host("models.example", lambda host: ["10.0.0.5"])
