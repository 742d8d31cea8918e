"""Small untrained student architectures for `edgepack distill --student file.py:factory`.

`digits_student` is the student for the digits CNN teacher (edgepack/examples/digits.py): 1,210
parameters against the teacher's 5,114 (under a quarter). Distill it with

    edgepack distill edgepack/examples/digits.py:digits_cnn --student edgepack/examples/students.py:digits_student \\
        --data train.npz --eval test.npz --target x86_64 -o dist
"""

from __future__ import annotations

import torch
from torch import nn

__version__ = "1.0.0"


class DigitsStudent(nn.Module):
    """Two Conv-ReLU-MaxPool stages (1→6→12 channels, 3×3) and a linear head: 1,210 parameters."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


def digits_student() -> nn.Module:
    """Factory: the untrained digits student (inputs batch × 1 × 8 × 8), seeded for repeatable runs."""
    torch.manual_seed(0)
    model = DigitsStudent()
    model.example_inputs = (torch.zeros(1, 1, 8, 8),)
    return model
