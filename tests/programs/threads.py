"""Two threads calling one model, 5 calls each (no mlscope in it: a corpus program for
tests/e2e/test_corpus.py)."""

import threading

import torch
from torch import nn

CALLS = 5

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
results: dict[str, list[float]] = {}


def work(name: str) -> None:
    with torch.no_grad():
        results[name] = [round(float(model(torch.full((1, 4), float(i)))), 4) for i in range(CALLS)]


threads = [threading.Thread(target=work, args=(f"worker-{i}",), name=f"worker-{i}") for i in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for name in sorted(results):
    print(name, results[name])
