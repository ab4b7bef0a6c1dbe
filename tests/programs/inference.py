"""Inference: a small CNN classifies a few batches (no mlscope in it: a corpus program for
tests/e2e/test_corpus.py)."""

import torch
from torch import nn

BATCHES = 3

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
).eval()
with torch.inference_mode():
    for _ in range(BATCHES):
        print(model(torch.randn(2, 1, 8, 8)).argmax(dim=1).tolist())
