"""Training with DataLoader workers: an MLP trained for a few steps on a synthetic dataset
loaded by 2 worker processes, started by `fork` (Linux's default) or, with `--spawn`, `spawn`
(no mlscope in it: a corpus program for tests/e2e/test_corpus.py)."""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SAMPLES, BATCH = 16, 4  # 4 steps


def main() -> None:
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(SAMPLES, 8), torch.randint(0, 2, (SAMPLES,)))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2,
                        multiprocessing_context="spawn" if "--spawn" in sys.argv else "fork")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        print(f"{loss.item():.4f}")


if __name__ == "__main__":  # spawned workers import this file
    main()
