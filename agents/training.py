"""Training steps at model level: the loss, `backward()`, the optimizer's `step()` and
`zero_grad()`, and the wait for the next batch, each a model-level span with `mlscope.phase`,
so a step reads data -> forward -> loss -> backward -> optimizer.step on the timeline.

    training = trace_training(agent)   # patches torch now; `mlscope run` does it by itself
    ...                                # the training loop, unchanged
    training.uninstrument()

Each span goes through `Agent.call_model`, the code path of model spans: at library level the
ops it runs (the backward's aten ops, which autograd runs on the calling thread on CPU; the
optimizer's foreach ops) are recorded under it by an ops-only torch capture. A span is made
only outside a model call: a loss or a backward inside a traced forward is part of that forward.

What is patched, and why there:
- loss modules (`torch.nn.modules.loss._Loss` subclasses): their `__call__`, so a loss is a
  `loss` span rather than a second model's `forward` (a loss written as a plain `nn.Module` is
  not recognisable as one and stays a model span);
- `torch.Tensor.backward` and `torch.autograd.backward` (the first calls the second: one span);
- an optimizer class's `step` as torch itself wraps it (`Optimizer._patch_step_function`, run
  by every optimizer's `__init__`), classes already wrapped when instrumenting included, and
  `Optimizer.zero_grad`;
- `_BaseDataLoaderIter.__next__`: the time the loop is blocked on its DataLoader (the
  iterator's end, StopIteration, is a `data` span too: the wait for workers to finish).
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlscope.conventions import FRAMEWORK_NAME, LEVEL, PHASE

from .api import Agent, in_model_call
from .model_spec import ModelSpec, batch_size

log = logging.getLogger(__name__)

_TRACED_STEP = "__mlscope_traced_step__"
"""Set on an optimizer `step` this module wrapped: it is not wrapped twice."""
_EXHAUSTED = object()


@dataclass(frozen=True)
class _Patch:
    owner: Any
    name: str
    original: Any
    patched: Any
    inherited: bool
    """`name` was not in `owner.__dict__`: undoing the patch deletes it."""


class TrainingInstrumentor:
    """The patches described in the module docstring, for `agent`. `instrument` and
    `uninstrument` are idempotent and mirror each other."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._patches: list[_Patch] = []
        self._specs: dict[str, ModelSpec] = {}

    @property
    def instrumented(self) -> bool:
        return bool(self._patches)

    def instrument(self, torch: types.ModuleType) -> None:
        if self.instrumented or not self._agent.enabled("model"):
            return
        from torch.optim.optimizer import Optimizer
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        self._patch(torch.nn.modules.loss._Loss, "__call__", self._traced_loss(torch))
        self._patch(torch.Tensor, "backward", functools.partial(self._traced, "backward", "backward", torch))
        self._patch(torch.autograd, "backward", functools.partial(self._traced, "backward", "backward", torch))
        self._patch(Optimizer, "zero_grad", functools.partial(self._traced, "optimizer.zero_grad", "optimizer", torch))
        self._patch(Optimizer, "_patch_step_function", functools.partial(self._wrapping_steps, torch))
        for optimizer_class in _subclasses(Optimizer):  # optimizers created before instrumenting
            self._trace_step(torch, optimizer_class)
        self._patch(_BaseDataLoaderIter, "__next__", self._traced_next_batch(torch))

    def uninstrument(self) -> None:
        for patch in reversed(self._patches):
            if vars(patch.owner).get(patch.name) is not patch.patched:
                log.debug("mlscope: %s.%s was re-patched by someone else; left as is", patch.owner, patch.name)
            elif patch.inherited:
                delattr(patch.owner, patch.name)
            else:
                setattr(patch.owner, patch.name, patch.original)
        self._patches.clear()
        self._specs.clear()

    def _patch(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        inherited = name not in vars(owner)
        original = getattr(owner, name)
        patched = functools.wraps(original)(wrap(original))
        setattr(owner, name, patched)
        self._patches.append(_Patch(owner, name, original, patched, inherited))

    def _spec(self, torch: types.ModuleType, span_name: str, phase: str) -> ModelSpec:
        """The spec of `span_name`'s spans, built once: at library level with an ops-only
        capture, so the ops the span runs are its children."""
        spec = self._specs.get(span_name)
        if spec is None:
            capture = None
            if self._agent.enabled("library"):
                from .torch_capture import CaptureOptions, TorchCapture

                capture = TorchCapture(torch.nn.Module(), span_name, CaptureOptions(layers=False, ops=True))
            attributes = {LEVEL: "model", PHASE: phase, FRAMEWORK_NAME: "pytorch"}
            spec = self._specs[span_name] = ModelSpec(span_name, attributes, capture)
        return spec

    def _traced(self, span_name: str, phase: str, torch: types.ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> Any:
            if in_model_call():
                return original(*args, **kwargs)
            return self._agent.call_model(self._spec(torch, span_name, phase), original, args, kwargs, 0)

        return traced

    def _traced_loss(self, torch: types.ModuleType) -> Callable[[Any], Callable[..., Any]]:
        def wrap(_inherited: Any) -> Callable[..., Any]:
            def traced_loss(module: Any, *args: Any, **kwargs: Any) -> Any:
                # Module.__call__ looked up per call: mlscope run patches it too.
                call = functools.partial(torch.nn.Module.__call__, module)
                if in_model_call():
                    return call(*args, **kwargs)
                return self._agent.call_model(self._spec(torch, "loss", "loss"), call, args, kwargs, batch_size(args))

            return traced_loss

        return wrap

    def _wrapping_steps(self, torch: types.ModuleType, original: Callable[[Any], None]) -> Callable[[Any], None]:
        def patch_step_function(optimizer: Any) -> None:
            original(optimizer)
            self._trace_step(torch, type(optimizer))

        return patch_step_function

    def _trace_step(self, torch: types.ModuleType, optimizer_class: type) -> None:
        """Wraps the class's `step` once torch has wrapped it (its hooks and profiler label then
        run inside the span)."""
        step = vars(optimizer_class).get("step")
        if step is None or not getattr(step, "hooked", False) or getattr(step, _TRACED_STEP, False):
            return

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            traced = self._traced("optimizer.step", "optimizer", torch, original)
            setattr(traced, _TRACED_STEP, True)
            return traced

        self._patch(optimizer_class, "step", wrap)

    def _traced_next_batch(self, torch: types.ModuleType) -> Callable[[Any], Callable[[Any], Any]]:
        def wrap(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def fetch(iterator: Any) -> Any:
                try:
                    return original(iterator)
                except StopIteration:  # the end of an epoch, not an error of the span
                    return _EXHAUSTED

            def next_batch(iterator: Any) -> Any:
                if in_model_call():
                    return original(iterator)
                batch = self._agent.call_model(self._spec(torch, "data", "data"), fetch, (iterator,), {}, 0)
                if batch is _EXHAUSTED:
                    raise StopIteration
                return batch

            return next_batch

        return wrap


def _subclasses(cls: type) -> list[type]:
    found, stack = [], [cls]
    while stack:
        for subclass in stack.pop().__subclasses__():
            found.append(subclass)
            stack.append(subclass)
    return found


def trace_training(agent: Agent) -> TrainingInstrumentor:
    """Traces the training steps of this process with `agent` from now on (imports torch);
    `mlscope run` does it by itself when the program imports torch."""
    import torch

    instrumentor = TrainingInstrumentor(agent)
    instrumentor.instrument(torch)
    return instrumentor
