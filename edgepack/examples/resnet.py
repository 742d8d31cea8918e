"""A ResNet-18-style network (BasicBlocks 2-2-2-2) written here, since torchvision is not usable.

Weights are random but seeded: it serves speed and size measurements, not accuracy.
Build it with `edgepack build edgepack/examples/resnet.py:resnet18_style`.
"""

from __future__ import annotations

import torch
from torch import nn

__version__ = "1.0.0"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetStyle(nn.Module):
    """Stem, four stages of two BasicBlocks, global average pooling, linear classifier."""

    def __init__(self, width: int = 64, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], width
        for index in range(4):
            out = width * 2 ** index
            stride = 1 if index == 0 else 2
            stages += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
            channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(image)).mean(dim=(2, 3)))


def _seeded(model: nn.Module, image_size: int) -> nn.Module:
    model.eval()
    model.example_inputs = (torch.zeros(1, 3, image_size, image_size),)
    return model


def resnet18_style() -> nn.Module:
    """ResNet-18 layout at 1x3x224x224, seeded random weights."""
    torch.manual_seed(0)
    return _seeded(ResNetStyle(64, 1000), 224)


def resnet_small() -> nn.Module:
    """The same layout at a quarter of the width and 1x3x64x64: quick to build and test."""
    torch.manual_seed(0)
    return _seeded(ResNetStyle(16, 10), 64)
