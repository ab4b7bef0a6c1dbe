"""A small library-level model trace for the analysis and diff tests: a run with a model call,
its layers (module paths, types, shapes) and their ops, built by trace_fixtures.row."""

from __future__ import annotations

from typing import Any

from mlscope.conventions import LAYER_INPUT_SHAPES, LAYER_OUTPUT_SHAPES, LAYER_PATH, LAYER_TYPE

from tests.query.trace_fixtures import row

RUN_TRACE = "0000000000000000000000000000a001"


def layer(path: str, layer_type: str, **shapes: str) -> dict[str, str]:
    attributes = {LAYER_PATH: path, LAYER_TYPE: layer_type}
    if shapes:
        attributes |= {LAYER_INPUT_SHAPES: shapes["inputs"], LAYER_OUTPUT_SHAPES: shapes["outputs"]}
    return attributes


def model_run(trace_id: str = RUN_TRACE, conv_ms: float = 33, extra_layer: bool = False) -> list[dict[str, Any]]:
    """run 0..100 ms > preprocess 0..10, predict 10..98 > TinyNet (path "") > conv1 (12..40, its
    op 13..39), relu (40..50, op 41..49), block.conv (50..50+conv_ms, op inside); `extra_layer`
    adds a `fc` layer and drops `relu` (a model with another architecture)."""
    block_end = 50 + conv_ms
    rows = [
        row("0000000000000001", "", "run", 0, 100, trace_id=trace_id),
        row("0000000000000002", "0000000000000001", "preprocess", 0, 10, "model", trace_id=trace_id),
        row("0000000000000003", "0000000000000001", "predict", 10, 98, "model", trace_id=trace_id),
        row("0000000000000004", "0000000000000003", "TinyNet", 10, 97, "layer", trace_id=trace_id,
            attributes=layer("", "TinyNet")),
        row("0000000000000005", "0000000000000004", "conv1", 12, 40, "layer", trace_id=trace_id,
            attributes=layer("conv1", "Conv2d", inputs="1x3x8x8", outputs="1x4x8x8")),
        row("0000000000000006", "0000000000000005", "aten::conv2d", 13, 39, "library", trace_id=trace_id),
        row("0000000000000009", "0000000000000004", "block.conv", 50, block_end, "layer", trace_id=trace_id,
            attributes=layer("block.conv", "Conv2d")),
        row("000000000000000a", "0000000000000009", "aten::conv2d", 51, block_end - 1, "library", trace_id=trace_id),
    ]
    if extra_layer:
        rows.append(row("000000000000000b", "0000000000000004", "fc", 40, 45, "layer", trace_id=trace_id,
                        attributes=layer("fc", "Linear")))
    else:
        rows += [
            row("0000000000000007", "0000000000000004", "conv1", 40, 50, "layer", trace_id=trace_id,
                attributes=layer("relu", "ReLU")),  # named like another layer: matched by path, not name
            row("0000000000000008", "0000000000000007", "aten::relu", 41, 49, "library", trace_id=trace_id),
        ]
    return rows
