"""A long tight loop: thousands of calls of a tiny model (no mlscope in it: a corpus program for
tests/e2e/test_corpus.py)."""

import torch
from torch import nn

CALLS = 3000

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
total = 0.0
with torch.inference_mode():
    for _ in range(CALLS):
        total += float(model(torch.ones(1, 8)).sum())
print(round(total, 2))
