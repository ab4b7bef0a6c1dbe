"""Predictors: one API (load, preprocess, predict, postprocess, close) over PyTorch eager,
TorchScript and ONNX Runtime, each tracing its stages as model-level spans through the Agent.

Pre- and post-processing are the manifest's declarative steps, the same numpy code for every
framework, so two predictors differ only in how they run the model. `predict` goes through
`agent.trace_model`, so a PyTorch model traced at layer or library level gets its deeper spans.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mlscope.conventions import BATCH_SIZE, EXECUTION_PROVIDER, FRAMEWORK_NAME, FRAMEWORK_VERSION, MODEL_NAME, MODEL_VERSION
from mlscope.agents import Agent
from mlscope.manifests import AssetCache, Manifest, framework_version, onnx_file, torch_weights, torchscript_file
from mlscope.manifests.processing import postprocess, preprocess

# --execution-provider values -> ONNX Runtime provider names.
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
EXECUTION_PROVIDERS = tuple(ORT_PROVIDERS)

Loaded = TypeVar("Loaded")


class PredictorError(Exception):
    """A predictor that cannot run here (an execution provider this machine lacks, ...)."""


class Predictor(ABC):
    framework: str

    def __init__(self, manifest: Manifest, agent: Agent, cache: AssetCache, execution_provider: str = "cpu") -> None:
        self.manifest = manifest
        self.agent = agent
        self.cache = cache
        self.execution_provider = self.resolve_provider(execution_provider)
        self.framework_version = framework_version(self.framework)
        self._run: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    @abstractmethod
    def resolve_provider(cls, requested: str) -> str:
        """The name of the execution provider `requested` (an EXECUTION_PROVIDERS value) maps to
        for this framework; PredictorError naming the available ones if this machine lacks it."""

    @abstractmethod
    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        """The model as a function of one input batch (numpy in, numpy out)."""

    def _attributes(self) -> dict[str, str]:
        return {
            MODEL_NAME: self.manifest.name,
            MODEL_VERSION: self.manifest.version,
            FRAMEWORK_NAME: self.framework,
            FRAMEWORK_VERSION: self.framework_version,
            EXECUTION_PROVIDER: self.execution_provider,
        }

    def load(self) -> None:
        with self.agent.span("load", level="model", attributes=self._attributes()):
            self._run = self._load()

    def preprocess(self, samples: Sequence[np.ndarray]) -> np.ndarray:
        """Raw samples -> one input batch."""
        with self.agent.span("preprocess", level="model", attributes={BATCH_SIZE: len(samples)}):
            batch = np.stack([preprocess(self.manifest.input.steps, sample) for sample in samples])
            return np.ascontiguousarray(batch, dtype=self.manifest.input.dtype)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output for a batch (e.g. logits)."""
        if self._run is None:
            raise PredictorError(f"{self.framework} predictor for {self.manifest.name}: predict before load")
        return self._run(batch)

    def postprocess(self, outputs: np.ndarray) -> list[np.ndarray]:
        """Raw outputs -> the manifest's result per sample (e.g. top-k class indices)."""
        with self.agent.span("postprocess", level="model", attributes={BATCH_SIZE: len(outputs)}):
            return [postprocess(self.manifest.output.steps, sample) for sample in outputs]

    def close(self) -> None:
        self._run = None


class _TorchPredictor(Predictor):
    @classmethod
    def resolve_provider(cls, requested: str) -> str:
        import torch

        available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if requested not in available:
            raise PredictorError(f"{cls.framework} cannot run on {requested!r} here; available: {', '.join(available)}")
        return requested

    @abstractmethod
    def _module(self) -> Any: ...

    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        device = torch.device(self.execution_provider)
        module = self.agent.trace_model(
            self._module().to(device), name=self.manifest.name, framework=self.framework, version=self.manifest.version
        )

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch).to(device)).cpu().numpy()

        return run


class PyTorchPredictor(_TorchPredictor):
    framework = "pytorch"

    def _module(self) -> Any:
        return torch_weights(self.manifest, self.cache)[0]


class TorchScriptPredictor(_TorchPredictor):
    framework = "torchscript"

    def _module(self) -> Any:
        import torch

        path = torchscript_file(self.manifest, self.cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what this predictor measures
            return _read_model_file(self.manifest, path, "TorchScript", torch.jit.load).eval()


class OnnxRuntimePredictor(Predictor):
    framework = "onnxruntime"

    @classmethod
    def resolve_provider(cls, requested: str) -> str:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        name = ORT_PROVIDERS.get(requested, requested)
        if name not in available:
            raise PredictorError(f"ONNX Runtime has no {name} here; available: {', '.join(available)}")
        return name

    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime

        session = _read_model_file(self.manifest, onnx_file(self.manifest, self.cache), "ONNX",
                                   lambda path: onnxruntime.InferenceSession(path, providers=[self.execution_provider]))
        input_name, output_name = self.manifest.input.name, self.manifest.output.name
        return self.agent.trace_model(
            lambda batch: session.run([output_name], {input_name: batch})[0],
            name=self.manifest.name, framework=self.framework, version=self.manifest.version,
        )


def _read_model_file(manifest: Manifest, path: Path, kind: str, read: Callable[[str], Loaded]) -> Loaded:
    """`read(path)`; a corrupt or foreign file is one PredictorError line naming the manifest
    and the file, not a traceback. Any Exception: ONNX Runtime's errors share no base class below it, and the file's
    sha256 matched, so what fails here is the file's content, not mlscope."""
    try:
        return read(str(path))
    except Exception as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PredictorError(f"{manifest.source}: model: the {kind} file {path} cannot be loaded ({reason[:200]})") from exc


PREDICTORS: dict[str, type[Predictor]] = {
    cls.framework: cls for cls in (PyTorchPredictor, TorchScriptPredictor, OnnxRuntimePredictor)
}


def check_runs_in(manifest: Manifest, framework: str) -> None:
    if framework not in manifest.predictors:
        raise PredictorError(
            f"{manifest.source}: a {manifest.framework.name} model runs in {', '.join(manifest.predictors)}, not {framework}"
        )


def create_predictor(
    framework: str, manifest: Manifest, agent: Agent, cache: AssetCache, execution_provider: str = "cpu"
) -> Predictor:
    check_runs_in(manifest, framework)
    return PREDICTORS[framework](manifest, agent, cache, execution_provider)
