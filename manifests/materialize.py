"""A manifest's model made real, in the form each predictor loads: a torch.nn.Module, a
TorchScript file or an ONNX file. Every file goes through the AssetCache: weights are generated
(and trained, when the manifest says so) once, and the exports are keyed by the weights' sha256
so new weights never meet an old export."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from packaging.specifiers import SpecifierSet

from .assets import AssetCache
from .datasets import load_dataset
from .loader import ManifestError, check_model_sources
from .model import Dataset, Manifest
from .processing import preprocess

if TYPE_CHECKING:
    import torch

# Training uses the whole train split, whatever the manifest's sample count (which sizes evaluations).
ALL_SAMPLES = 1 << 30


def framework_version(framework: str) -> str:
    """The installed version of a manifest framework (or predictor framework)."""
    if framework == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import torch

    return torch.__version__.split("+", 1)[0]


def check_framework(manifest: Manifest) -> None:
    """The manifest's framework version constraint against what is installed."""
    installed = framework_version(manifest.framework.name)
    if installed not in SpecifierSet(manifest.framework.version):
        raise ManifestError(manifest.source, "framework.version",
                            f"installed {manifest.framework.name} {installed} does not satisfy {manifest.framework.version!r}")


def example_batch(manifest: Manifest, batch_size: int = 1) -> np.ndarray:
    """Zeros (ones for token ids: 0 is padding) shaped as the model's input."""
    fill = np.ones if manifest.input.dtype == "int64" else np.zeros
    return fill((batch_size, *manifest.input.shape), dtype=manifest.input.dtype)


def _model_dir(manifest: Manifest) -> str:
    return f"models/{manifest.name}-{manifest.version}"


def _asset(manifest: Manifest, cache: AssetCache) -> Path:
    location = manifest.model.url or manifest.model.path
    if manifest.model.path and not Path(location).is_absolute():
        location = str(Path(manifest.source).parent / location)  # relative to the manifest file
    return cache.fetch(location, manifest.model.sha256, manifest.model.size)


def _build(manifest: Manifest, cache: AssetCache) -> torch.nn.Module:
    check_model_sources(manifest, cache.sources)  # before anything is imported: a remote manifest names no code
    module_name, function = manifest.model.builder.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ManifestError(manifest.source, "model.builder", f"cannot load {manifest.model.builder!r}: {exc}") from exc
    return builder()


def torch_weights(manifest: Manifest, cache: AssetCache) -> tuple[torch.nn.Module, str]:
    """The builder's module with its cached weights. The first use saves the seeded (or trained)
    weights, so later runs get the same numbers even where a newer torch initializes differently."""
    import torch

    from .models import train_classifier

    model = _build(manifest, cache)

    def produce(path: Path) -> None:
        if manifest.model.training is not None:
            inputs, labels = preprocessed_dataset(manifest, replace(manifest.dataset, split="train", samples=ALL_SAMPLES))
            if labels is None:
                raise ManifestError(manifest.source, "model.train", f"dataset {manifest.dataset.name} has no labels")
            train_classifier(model, inputs, labels, manifest.model.training)
        torch.save(model.state_dict(), path)

    path, digest = cache.generated(f"{_model_dir(manifest)}/weights.pt", produce)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), digest


def torchscript_file(manifest: Manifest, cache: AssetCache) -> Path:
    if manifest.model.format == "torchscript":
        return _asset(manifest, cache)
    import torch

    model, digest = torch_weights(manifest, cache)

    def produce(path: Path) -> None:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what this predictor measures
            traced = torch.jit.trace(model, torch.from_numpy(example_batch(manifest)))
            torch.jit.save(traced, str(path))

    return cache.generated(f"{_model_dir(manifest)}/model-{digest[:16]}.torchscript.pt", produce)[0]


def onnx_file(manifest: Manifest, cache: AssetCache) -> Path:
    if manifest.model.format == "onnx":
        return _asset(manifest, cache)
    import torch

    model, digest = torch_weights(manifest, cache)

    def produce(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                model, (torch.from_numpy(example_batch(manifest)),), str(path), dynamo=False,
                input_names=[manifest.input.name], output_names=[manifest.output.name],
                dynamic_axes={manifest.input.name: {0: "batch"}, manifest.output.name: {0: "batch"}},
                opset_version=17,
            )

    return cache.generated(f"{_model_dir(manifest)}/model-{digest[:16]}.onnx", produce)[0]


def preprocessed_dataset(manifest: Manifest, dataset: Dataset | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(the dataset's inputs after the manifest's preprocessing, stacked; labels or None).
    `dataset` defaults to the manifest's."""
    max_tokens = manifest.input.shape[0] if manifest.input.dtype == "int64" else 0
    loaded = load_dataset(dataset or manifest.dataset, max_tokens=max_tokens)
    inputs = np.stack([preprocess(manifest.input.steps, sample) for sample in loaded.inputs])
    return inputs.astype(manifest.input.dtype), loaded.labels
