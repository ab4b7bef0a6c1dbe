"""An ONNX Runtime program with no mlscope in it, for `mlscope run` tests: a tiny two-layer
network built in code (no file, no torch), run `--runs` times with the user's own
SessionOptions (graph optimizations off, so every node of the graph runs as built)."""

import argparse
import sys

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

BATCH, FEATURES, HIDDEN, CLASSES = 4, 8, 16, 3


def model_bytes() -> bytes:
    rng = np.random.default_rng(0)
    weights = {"w1": (FEATURES, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, CLASSES)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
         helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
         helper.make_node("Relu", ["hb"], ["a"], name="relu1"),
         helper.make_node("MatMul", ["a", "w2"], ["y"], name="dense2")],
        "tiny-mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_bytes(), options, providers=["CPUExecutionProvider"])
    inputs = {"x": np.ones((BATCH, FEATURES), dtype=np.float32)}
    for _ in range(args.runs):
        (scores,) = session.run(None, inputs)
        print(" ".join(map(str, scores.argmax(axis=1).tolist())))
    # What a traced program sees of its own options afterwards: as it made them.
    print(f"enable_profiling={options.enable_profiling}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
