"""A multiprocessing.Pool of 2 workers, each call a small model's forward, started by `fork` or,
with `--spawn`, `spawn`; closed and joined (no mlscope in it: a corpus program for
tests/e2e/test_corpus.py)."""

import multiprocessing
import sys

import torch
from torch import nn

CALLS = 4

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def predict(i: int) -> float:
    with torch.no_grad():
        return round(float(model(torch.ones(1, 8) * i).sum()), 4)


if __name__ == "__main__":  # spawned workers import this file
    context = multiprocessing.get_context("spawn" if "--spawn" in sys.argv else "fork")
    with context.Pool(2) as pool:
        print(pool.map(predict, range(CALLS), chunksize=1))
        pool.close()
        pool.join()
