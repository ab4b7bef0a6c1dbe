"""The typed manifest: what one model evaluation is specified by (docs/manifests.md).

Frozen value objects only; `loader` builds them from YAML and is the one place that validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The frameworks a manifest's model can be written for, and the predictors that can run each.
# A PyTorch model runs eagerly, traced to TorchScript, or exported to ONNX; an ONNX graph only
# runs in ONNX Runtime.
PREDICTORS_FOR: dict[str, tuple[str, ...]] = {
    "pytorch": ("pytorch", "torchscript", "onnxruntime"),
    "onnxruntime": ("onnxruntime",),
}
FRAMEWORKS: tuple[str, ...] = tuple(PREDICTORS_FOR)
TASKS: tuple[str, ...] = ("image-classification", "text-classification")
DATASETS: tuple[str, ...] = ("digits", "synthetic-images", "synthetic-tokens")
ASSET_FORMATS: tuple[str, ...] = ("onnx", "torchscript")


@dataclass(frozen=True)
class Framework:
    name: str
    version: str  # a PEP 440 specifier set, e.g. ">=2.0,<3"; "" accepts any version


@dataclass(frozen=True)
class Training:
    """Train on first use on the manifest's dataset (its train split), then cache the weights."""

    epochs: int
    learning_rate: float
    seed: int = 0


@dataclass(frozen=True)
class ModelAssets:
    """Either a builder (`package.module:function` returning a torch.nn.Module with seeded
    weights) or a graph file from `path`/`url` with its sha256 (and, optionally, its size in
    bytes: the most a download reads)."""

    builder: str = ""
    path: str = ""
    url: str = ""
    sha256: str = ""
    format: str = ""
    size: int = 0
    training: Training | None = None


@dataclass(frozen=True)
class Step:
    """One declarative processing step, e.g. Step("resize", {"size": (224, 224)})."""

    op: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...] = ()  # without the batch dimension
    dtype: str = "float32"
    steps: tuple[Step, ...] = ()  # preprocess for inputs, postprocess for outputs


@dataclass(frozen=True)
class Dataset:
    name: str
    samples: int
    split: str = "test"
    seed: int = 0


@dataclass(frozen=True)
class Manifest:
    source: str  # the file it was read from, for messages
    name: str
    version: str
    description: str
    task: str
    framework: Framework
    model: ModelAssets
    input: Tensor
    output: Tensor
    dataset: Dataset
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)

    @property
    def predictors(self) -> tuple[str, ...]:
        """The predictor frameworks that can run this model."""
        return PREDICTORS_FOR[self.framework.name]
