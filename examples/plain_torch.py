"""A small PyTorch program with no mlscope in it: a tiny CNN built in code with seeded weights,
run over a few batches. Trace it from outside:

    mlscope run --level library -- python examples/plain_torch.py

Exits with the code given by `--exit-code` (default 0) after the batches, so the exit status a
traced run reports can be checked.
"""

import argparse
import sys

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(16, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(images), 1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--exit-code", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = TinyCNN().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for _ in range(args.batches):
            images = torch.rand(args.batch_size, 3, 32, 32, generator=generator)
            top = model(images).softmax(dim=1).argmax(dim=1)
            print(" ".join(map(str, top.tolist())))
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
