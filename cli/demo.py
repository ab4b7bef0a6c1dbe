"""The demo pipeline: a small image classifier built in code (seeded weights, nothing
downloaded), run over a few batches and traced from the application down to library level (aten ops).

Run as `python -m mlscope.cli.demo --endpoint URL [--level L]`; prints the trace id of its run.
"""

from __future__ import annotations

from mlscope.conventions import BATCH_INDEX, MODEL_NAME
import argparse

import torch
from torch import nn

from mlscope.agents import start_agent
from mlscope.conventions import LEVELS

SEED = 0
IMAGE_SIZE = 64
CLASSES = 10


def build_model() -> nn.Module:
    """A ResNet-flavoured CNN small enough to run in milliseconds on a CPU."""
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    ).eval()


def run_pipeline(endpoint: str | None, level: str = "library", batches: int = 3, batch_size: int = 4) -> str:
    """Runs the traced pipeline at `level`; returns its trace id (32 lowercase hex)."""
    agent = start_agent(service="mlscope-demo", endpoint=endpoint, level=level)
    try:
        with agent.span("demo-pipeline") as root:
            with agent.span("load-model", level="model", attributes={MODEL_NAME: "democnn"}):
                model = agent.trace_model(build_model(), name="democnn", framework="pytorch", version="1")
            generator = torch.Generator().manual_seed(SEED)
            for batch in range(batches):
                with agent.span("batch", attributes={BATCH_INDEX: batch}):
                    with agent.span("preprocess", level="model"):
                        images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
                        images = (images - 0.5) / 0.25
                    with torch.inference_mode():
                        logits = model(images)
                    with agent.span("postprocess", level="model"):
                        logits.softmax(dim=1).topk(3)
            return format(root.get_span_context().trace_id, "032x")
    finally:
        agent.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run mlscope's traced demo pipeline.")
    parser.add_argument("--endpoint", default=None, help="collector OTLP/HTTP base URL")
    parser.add_argument("--level", default="library", choices=LEVELS[:4])
    args = parser.parse_args()
    print(run_pipeline(args.endpoint, args.level), flush=True)


if __name__ == "__main__":
    main()
