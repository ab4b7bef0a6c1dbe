"""A model exported to ONNX (the TorchScript exporter) and then run by ONNX Runtime, its outputs
checked against torch's (no mlscope in it: a corpus program for tests/e2e/test_corpus.py)."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

RUNS = 3

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
example = torch.randn(2, 8)
with tempfile.TemporaryDirectory() as directory:
    path = Path(directory) / "mlp.onnx"
    torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    for _ in range(RUNS):
        (output,) = session.run(None, {"x": example.numpy()})
        if not np.allclose(output, expected, atol=1e-5):
            sys.exit("ONNX Runtime and torch disagree")
    print([[round(float(value), 3) for value in row] for row in output])
