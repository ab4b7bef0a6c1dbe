"""The datasets a manifest can name, all available offline: scikit-learn's digits (labelled,
bundled with the package) and seeded synthetic images and token sequences (unlabelled: they
time a model, they cannot score it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Dataset

SYNTHETIC_IMAGE_SIZE = 256  # raw pixels before the manifest's resize, as a camera image would be
SYNTHETIC_VOCABULARY = 1000
TRAIN_FRACTION = 0.75


@dataclass(frozen=True)
class Samples:
    inputs: tuple[np.ndarray, ...]  # raw samples, before preprocessing
    labels: np.ndarray | None  # class index per sample; None for unlabelled data


def load_dataset(dataset: Dataset, max_tokens: int = 128) -> Samples:
    """`dataset.samples` samples of its split (fewer if it has fewer); token sequences are up to
    `max_tokens` long."""
    count = dataset.samples
    rng = np.random.default_rng(dataset.seed)
    if dataset.name == "digits":
        return _digits(dataset, count)
    if dataset.name == "synthetic-images":
        size = (count, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_IMAGE_SIZE, 3)
        return Samples(tuple(rng.integers(0, 256, size=size, dtype=np.uint8)), None)
    lengths = rng.integers(max(1, max_tokens // 2), max_tokens + 1, size=count)
    return Samples(tuple(rng.integers(1, SYNTHETIC_VOCABULARY, size=n, dtype=np.int64) for n in lengths), None)


def _digits(dataset: Dataset, count: int) -> Samples:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # A fixed shuffle (by the dataset's seed) so train and test never share a sample.
    order = np.random.default_rng(dataset.seed).permutation(len(digits.target))
    cut = int(len(order) * TRAIN_FRACTION)
    chosen = (order[:cut] if dataset.split == "train" else order[cut:])[:count]
    return Samples(tuple(digits.images[chosen].astype(np.float32)), digits.target[chosen].astype(np.int64))
