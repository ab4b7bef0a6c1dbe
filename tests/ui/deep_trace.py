"""A trace shaped like `mlscope run --level library` of a small CNN, for the viewer's tests and
bench/ui.py: a process span, model calls on a worker thread, layers (`features.3`, `Conv2d`),
and aten ops under each layer, with the model calls short next to the process (as in the demo,
where they are slivers until zoomed), plus a forked worker process of its own."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

from tests.query.trace_fixtures import row

DEEP_TRACE = "5a1d0c0ffee0000000000000000000d1"
PROCESS_MS = 1000.0
LAYER_TYPES = ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Linear")
OPS = ("aten::conv2d", "aten::add", "aten::relu", "aten::copy_", "aten::mm", "aten::empty")


def span_id(number: int) -> str:
    """The span numbered `number`'s id: as random-looking as the 8 random bytes of an agent's span
    ids (a multiplication by an odd number modulo 2^64 is one-to-one), so that the ids of a
    trace's rows, by start, are in no order."""
    return f"{number * 0x9E3779B97F4A7C15 % 2**64:016x}"


def _layers(ids: Iterator[int], model: str, start: float, end: float, layers: int, ops: int,
            trace_id: str) -> Iterator[dict[str, Any]]:
    width = (end - start) / layers
    for index in range(layers):
        layer_id = span_id(next(ids))
        layer_start = start + index * width
        kind = LAYER_TYPES[index % len(LAYER_TYPES)]
        yield row(layer_id, model, str(index), layer_start, layer_start + width * 0.95, "layer", trace_id=trace_id,
                  attributes={"mlscope.layer.path": f"features.{index}", "mlscope.layer.type": kind})
        op_width = width * 0.9 / ops
        for op in range(ops):
            op_start = layer_start + op * op_width
            yield row(span_id(next(ids)), layer_id, OPS[(index + op) % len(OPS)], op_start, op_start + op_width * 0.9,
                      "library", trace_id=trace_id, attributes={"mlscope.op.index": str(op)})


def deep_trace_rows(calls: int = 4, layers: int = 6, ops: int = 3, trace_id: str = DEEP_TRACE,
                    process_name: str = "classify.py") -> list[dict[str, Any]]:
    """process -> `calls` model calls (on thread 7) -> `layers` layers each -> `ops` ops each,
    and a forked worker process with one call of its own. 1 + calls * (1 + layers * (1 + ops))
    + 2 + layers * (1 + ops) spans."""
    ids = count(1)
    process = span_id(next(ids))
    rows = [row(process, "", process_name, 0, PROCESS_MS, "application", trace_id=trace_id,
                attributes={"process.pid": "4242"})]
    gap = PROCESS_MS * 0.8 / calls
    for call in range(calls):
        start = 100 + call * gap
        model = span_id(next(ids))
        rows.append(row(model, process, "resnet18", start, start + gap * 0.05, "model", trace_id=trace_id,
                        attributes={"mlscope.model.name": "resnet18", "thread.id": "7", "thread.name": "predictor"}))
        rows.extend(_layers(ids, model, start, start + gap * 0.05, layers, ops, trace_id))
    worker = span_id(next(ids))
    rows.append(row(worker, process, process_name, 500, 900, "application", trace_id=trace_id,
                    attributes={"process.pid": "4243"}))
    model = span_id(next(ids))
    rows.append(row(model, worker, "resnet18", 600, 700, "model", trace_id=trace_id,
                    attributes={"mlscope.model.name": "resnet18"}))
    rows.extend(_layers(ids, model, 600, 700, layers, ops, trace_id))
    return rows
