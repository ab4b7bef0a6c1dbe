"""Model manifests: the YAML that specifies a model evaluation (docs/manifests.md), the
built-in manifests beside this file, and the data manager that makes their models real.

    manifest = load_manifest("manifests/resnet18.yaml")    # or a built-in name: "resnet18"
    onnx_path = onnx_file(manifest, AssetCache())            # generated once, checksummed
"""

from __future__ import annotations

from .assets import AssetCache, AssetError, sha256_file
from .loader import ManifestError, builtin_manifests, load_manifest, manifest_from_text, parse_manifest, read_manifest
from .materialize import check_framework, framework_version, onnx_file, preprocessed_dataset, torch_weights, torchscript_file
from .model import Manifest

__all__ = [
    "AssetCache", "AssetError", "Manifest", "ManifestError", "builtin_manifests", "check_framework",
    "framework_version", "load_manifest", "manifest_from_text", "onnx_file", "parse_manifest", "preprocessed_dataset",
    "read_manifest", "sha256_file",
    "torch_weights", "torchscript_file",
]
