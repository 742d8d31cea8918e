"""The built-in example: a small CNN trained in seconds on scikit-learn's digits (8x8 images, 10 classes).

Build it with `edgepack build edgepack/examples/digits.py:digits_cnn --target x86_64`.
Nothing is downloaded: the dataset ships inside scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__version__ = "1.0.0"

SEED = 0


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU, a residual Conv-BN block, 2x2 max pooling and a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width * 16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.stem(image)
        features = torch.relu(features + self.block(features))
        return self.head(self.pool(features).flatten(1))


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of the digits as float32 images in [0, 1] shaped N×1×8×8, and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return tuple(train_test_split(images, digits.target.astype(np.int64), test_size=0.25, random_state=SEED, stratify=digits.target))


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 8) -> nn.Module:
    """Plain Adam + cross-entropy training, deterministic for a given seed."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits against integer labels."""
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def digits_cnn() -> nn.Module:
    """Factory for `edgepack build`: the trained digits CNN, batch 1 (example_inputs set)."""
    torch.manual_seed(SEED)
    train_x, _, train_y, _ = digits_split()
    model = train(DigitsCNN(), train_x, train_y)
    model.example_inputs = (torch.zeros(1, 1, 8, 8),)
    return model


def write_test_inputs(path: Path, count: int = 8) -> Path:
    """Save `count` test images as an .npz (`image`: count×1×1×8×8) for `--golden-inputs`."""
    _, test_x, _, _ = digits_split()
    np.savez(path, image=test_x[:count, None])
    return Path(path)


def write_eval_data(path: Path) -> Path:
    """Save the whole test split as an .npz (`image`: N×1×8×8, `labels`: N) for `--eval`."""
    _, test_x, _, test_y = digits_split()
    np.savez(path, image=test_x, labels=test_y)
    return Path(path)
