"""Model manifests: the YAML that specifies a model evaluation (docs/manifests.md), the
built-in manifests beside this file, and the data manager that makes their models real.

    manifest = load_manifest("manifests/resnet18.yaml")    # or a built-in name: "resnet18"
    onnx_path = onnx_file(manifest, AssetCache())            # generated once, checksummed
"""

from __future__ import annotations

from .assets import AssetCache, AssetError, DownloadLimits, sha256_file
from .loader import (
    ManifestError, builtin_manifests, check_model_sources, load_manifest, manifest_from_text, parse_manifest, read_manifest,
    read_manifest_text, substitute_env,
)
from .materialize import check_framework, framework_version, onnx_file, preprocessed_dataset, torch_weights, torchscript_file
from .model import Manifest
from .trust import BUILTIN_BUILDERS, LOCAL_SOURCES, ModelSources

__all__ = [
    "AssetCache", "AssetError", "BUILTIN_BUILDERS", "DownloadLimits", "LOCAL_SOURCES", "Manifest", "ManifestError",
    "ModelSources", "builtin_manifests", "check_framework", "check_model_sources", "framework_version", "load_manifest",
    "manifest_from_text", "onnx_file", "parse_manifest", "preprocessed_dataset", "read_manifest", "read_manifest_text",
    "sha256_file", "substitute_env", "torch_weights", "torchscript_file",
]
