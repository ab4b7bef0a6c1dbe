"""Model builders named by the built-in manifests (`builder: mlscope.manifests.models:NAME`):
architectures written in code with seeded weights, so nothing is downloaded. Layouts follow
torchvision and BERT so layer names read as users expect."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mlscope.agents.resnet import resnet18 as _resnet18

from .model import Training

SEED = 0


def _seeded(build: Callable[[], nn.Module], seed: int = SEED) -> nn.Module:
    """Builds under a private RNG state, so a builder neither depends on nor moves torch's global one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def resnet18() -> nn.Module:
    return _resnet18(seed=SEED)


class AlexNet(nn.Module):
    """The paper's model, in torchvision's layout."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet() -> nn.Module:
    return _seeded(AlexNet)


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, linear); a shortcut when shapes allow."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inputs * expand
        layers = [_conv_bn(inputs, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, outputs, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, first stride), as in the paper and torchvision.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        channels = 32
        for expand, outputs, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, outputs, stride if index == 0 else 1, expand))
                channels = outputs
        layers.append(_conv_bn(channels, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v2() -> nn.Module:
    return _seeded(MobileNetV2)


class EncoderLayer(nn.Module):
    """A post-norm BERT encoder layer; attention written out (no fused kernel) so every
    framework and exporter sees the same plain ops."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        head_size = hidden // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, head_size).transpose(1, 2)

        scores = heads(self.query(x)) @ heads(self.key(x)).transpose(-1, -2) / head_size**0.5
        context = (scores + mask).softmax(dim=-1) @ heads(self.value(x))
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attention_norm(x + self.attention_output(context))
        return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))


class BertTiny(nn.Module):
    """BERT-tiny's shape (2 layers, hidden 128, 2 heads) with a small vocabulary; token id 0 is
    padding and is masked out of attention; the first token's state classifies."""

    def __init__(self, vocabulary: int = 1000, length: int = 128, hidden: int = 128, layers: int = 2,
                 heads: int = 2, intermediate: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocabulary, hidden)
        self.positions = nn.Embedding(length, hidden)
        self.embedding_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_norm(self.embeddings(ids) + self.positions(positions))
        mask = (ids == 0).to(x.dtype)[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert_tiny() -> nn.Module:
    return _seeded(BertTiny)


def digits_mlp() -> nn.Module:
    """A small classifier for 8x8 digits (64 inputs); `train` in its manifest fits it on first use."""
    return _seeded(lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))


def train_classifier(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, training: Training) -> None:
    """Fits `model` in place: Adam, cross-entropy, seeded minibatches of 64, on one thread
    (for ops this small, torch's thread pool costs more than it saves: docs/PERFORMANCE.md)."""
    generator = torch.Generator().manual_seed(training.seed)
    features, targets = torch.from_numpy(inputs), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(training.epochs):
            for batch in torch.randperm(len(targets), generator=generator).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(features[batch]), targets[batch]).backward()
                optimizer.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)
