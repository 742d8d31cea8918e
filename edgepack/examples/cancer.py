"""A tabular example: scikit-learn's breast cancer data (30 features, 2 classes) and a small MLP teacher.

Features are standardised inside the model (fixed mean/std buffers), so the ONNX takes raw features.
Nothing is downloaded: the dataset ships inside scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__version__ = "1.0.0"

SEED = 0


def cancer_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 75/25 train/test split: float32 features N×30, int64 labels."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    return tuple(train_test_split(data.data.astype(np.float32), data.target.astype(np.int64), test_size=0.25,
                                  random_state=SEED, stratify=data.target))


class Standardised(nn.Module):
    """(x − mean) / std of the training split, then `body`."""

    def __init__(self, body: nn.Module):
        super().__init__()
        train_x = cancer_split()[0]
        self.register_buffer("mean", torch.from_numpy(train_x.mean(axis=0)))
        self.register_buffer("std", torch.from_numpy(train_x.std(axis=0) + 1e-6))
        self.body = body

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body((features - self.mean) / self.std)


def cancer_mlp() -> nn.Module:
    """Factory: the trained teacher, 30 → 64 → 32 → 2 (4,130 parameters), batch 1."""
    torch.manual_seed(SEED)
    model = Standardised(nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2)))
    train_x, _, train_y, _ = cancer_split()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(60):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            batch = order[start:start + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    model.example_inputs = (torch.zeros(1, 30),)
    return model


def cancer_student() -> nn.Module:
    """Factory: the untrained student, 30 → 4 → 2 (134 parameters), standardised like the teacher."""
    torch.manual_seed(SEED)
    model = Standardised(nn.Sequential(nn.Linear(30, 4), nn.ReLU(), nn.Linear(4, 2)))
    model.example_inputs = (torch.zeros(1, 30),)
    return model
