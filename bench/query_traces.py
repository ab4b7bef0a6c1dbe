"""Span rows of a realistic shape for the query benchmark and its tests: one application root,
then model calls one after the other, each a `predict` span over layers over library ops (the
shape of a library-level ResNet-18 run: ~150 spans a call). Columns, ready for Store.insert.
"""

from __future__ import annotations

from mlscope.conventions import LAYER_PATH, LAYER_TYPE, LEVEL, MODEL_NAME, SERVICE_NAME
from mlscope.store import Columns, empty_columns

LAYERS_PER_CALL = 24
OPS_PER_LAYER = 5
SPANS_PER_CALL = 1 + LAYERS_PER_CALL * (1 + OPS_PER_LAYER)
OP_NS = 40_000
LAYER_NS = OPS_PER_LAYER * OP_NS + 10_000
CALL_NS = LAYERS_PER_CALL * LAYER_NS + 50_000
OP_NAMES = ("aten::conv2d", "aten::batch_norm", "aten::relu", "aten::add", "aten::addmm")
LAYER_TYPES = ("Conv2d", "BatchNorm2d", "ReLU", "Linear")


def _span_id(trace_number: int, span_number: int) -> str:
    return f"{trace_number:08x}{span_number:08x}"


def trace_id_of(trace_number: int) -> str:
    return f"{trace_number:032x}"


def trace_columns(trace_number: int, span_count: int, start_ns: int, service: str = "bench") -> Columns:
    """About `span_count` spans (whole calls, at least one) of trace `trace_number`."""
    columns = empty_columns("span_rows")
    trace_id = trace_id_of(trace_number)
    calls = max(1, (span_count - 1) // SPANS_PER_CALL)
    next_number = 0

    def add(parent: str, name: str, level: str, start: int, duration: int, attributes: dict[str, str]) -> str:
        nonlocal next_number
        next_number += 1
        span_id = _span_id(trace_number, next_number)
        values = {
            "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": name,
            "kind": "internal", "service": service, "level": level, "start_ns": start,
            "end_ns": start + duration, "duration_ns": duration, "status_code": "unset",
            "status_message": "", "scope_name": "bench", "scope_version": "1",
            "attr_keys": [LEVEL, *attributes], "attr_values": [level, *attributes.values()],
            "resource_keys": [SERVICE_NAME], "resource_values": [service],
            "event_times_ns": [], "event_names": [], "event_attrs_json": [], "links_json": "",
        }
        for name_, value in values.items():
            columns[name_].append(value)
        return span_id

    root = add("", "pipeline", "application", start_ns, calls * CALL_NS + 100_000, {MODEL_NAME: "resnet18"})
    for call in range(calls):
        call_start = start_ns + 50_000 + call * CALL_NS
        predict = add(root, "predict", "model", call_start, CALL_NS - 20_000, {MODEL_NAME: "resnet18"})
        for layer in range(LAYERS_PER_CALL):
            layer_start = call_start + 10_000 + layer * LAYER_NS
            layer_type = LAYER_TYPES[layer % len(LAYER_TYPES)]
            layer_id = add(predict, f"layer{layer // 4}.{layer % 4}", "layer", layer_start, LAYER_NS - 5_000,
                           {LAYER_PATH: f"layer{layer // 4}.{layer % 4}", LAYER_TYPE: layer_type})
            for op in range(OPS_PER_LAYER):
                add(layer_id, OP_NAMES[(layer + op) % len(OP_NAMES)], "library",
                    layer_start + 2_000 + op * OP_NS, OP_NS - 3_000, {})
    return columns
