"""How calls of one model are traced (`ModelSpec`), shared by the agent (agents/api.py), `mlscope
run`'s automatic instrumentation (agents/bootstrap.py) and ONNX Runtime sessions
(agents/onnx_capture.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from .torch_capture import TorchCapture

AttributeValue = str | bool | int | float


@dataclass(frozen=True)
class ModelSpec:
    """How calls of one model are traced: the model span's name and attributes, and the capture
    of the deeper levels (None at model level or for non-torch models)."""

    span_name: str
    attributes: Mapping[str, AttributeValue]
    capture: TorchCapture | None
    on_end: Callable[[SpanContext, int, int], None] | None = None
    """Called with each model span's context, start and end once it has ended (ONNX Runtime's
    profiler hands its node events over later, for many calls at once)."""


def batch_size(args: tuple[Any, ...]) -> int:
    """The leading dimension of the first argument (a tensor or array), 0 when it has none."""
    shape = getattr(args[0], "shape", None) if args else None
    return int(shape[0]) if shape else 0
