"""The declarative pre- and post-processing steps a manifest may name, and what they do.

Pure numpy on one sample at a time (batching is the predictor's job), so a manifest means the
same thing to every framework. `PREPROCESS` and `POSTPROCESS` also declare each step's
parameters, which is what the manifest loader checks them against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import Step


@dataclass(frozen=True)
class Param:
    kind: str  # "number", "int", "numbers" (a list of numbers), "ints"
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class StepKind:
    params: dict[str, Param]
    apply: Callable[[np.ndarray, dict[str, Any]], np.ndarray]


def _resize(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Bilinear resize of an HWC image (torch's kernel, so every predictor sees the same pixels)."""
    import torch

    height, width = params["size"]
    if sample.shape[:2] == (height, width):
        return sample
    image = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).numpy()


def _to_tensor(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """HWC (or HW) pixels -> CHW float32, scaled (1/255 by default, as torchvision's ToTensor)."""
    pixels = np.asarray(sample, dtype=np.float32) * np.float32(params["scale"])
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _normalize(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Per-channel (first axis) (x - mean) / std."""
    shape = (-1,) + (1,) * (sample.ndim - 1)
    mean = np.asarray(params["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(params["std"], dtype=np.float32).reshape(shape)
    return ((sample - mean) / std).astype(np.float32)


def _scale(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return (np.asarray(sample, dtype=np.float32) * np.float32(params["factor"])).astype(np.float32)


def _flatten(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return np.ascontiguousarray(sample).reshape(-1)


def _pad(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Token ids cut or padded to `length` with `value`."""
    length, value = params["length"], params["value"]
    ids = np.asarray(sample, dtype=np.int64)[:length]
    return np.concatenate([ids, np.full(length - len(ids), value, dtype=np.int64)])


def _softmax(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    shifted = np.asarray(sample, dtype=np.float64) - np.max(sample)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)


def _top_k(sample: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The k best class indices, best first (ties: lower index first)."""
    return np.argsort(-np.asarray(sample), kind="stable")[: params["k"]]


PREPROCESS: dict[str, StepKind] = {
    "resize": StepKind({"size": Param("ints")}, _resize),
    "to-tensor": StepKind({"scale": Param("number", required=False, default=1 / 255)}, _to_tensor),
    "normalize": StepKind({"mean": Param("numbers"), "std": Param("numbers")}, _normalize),
    "scale": StepKind({"factor": Param("number")}, _scale),
    "flatten": StepKind({}, _flatten),
    "pad": StepKind({"length": Param("int"), "value": Param("int", required=False, default=0)}, _pad),
}
POSTPROCESS: dict[str, StepKind] = {
    "softmax": StepKind({}, _softmax),
    "top-k": StepKind({"k": Param("int")}, _top_k),
}


def run_steps(steps: Sequence[Step], kinds: dict[str, StepKind], sample: np.ndarray) -> np.ndarray:
    for step in steps:
        sample = kinds[step.op].apply(sample, step.params)
    return sample


def preprocess(steps: Sequence[Step], sample: np.ndarray) -> np.ndarray:
    return run_steps(steps, PREPROCESS, sample)


def postprocess(steps: Sequence[Step], sample: np.ndarray) -> np.ndarray:
    return run_steps(steps, POSTPROCESS, sample)
