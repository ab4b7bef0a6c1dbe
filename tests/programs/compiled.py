"""torch.compile (the eager backend: inductor's C++ compile takes tens of seconds) of a small
model, called a few times (no mlscope in it: a corpus program for tests/e2e/test_corpus.py)."""

import torch
from torch import nn

CALLS = 3

torch.manual_seed(0)
model = torch.compile(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), backend="eager")
with torch.no_grad():
    for i in range(CALLS):
        print([round(value, 4) for value in model(torch.ones(2, 8) * i).sum(dim=1).tolist()])
