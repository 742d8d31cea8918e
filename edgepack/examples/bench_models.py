"""Models of the benchmark suite (scripts/bench_suite.py) not covered by digits.py and resnet.py.

Seeded random weights: they serve speed measurements, not accuracy. Each factory sets example_inputs,
so `edgepack build edgepack/examples/bench_models.py:mobilenet_v2_style` works as is.
"""

from __future__ import annotations

import torch
from torch import nn

__version__ = "1.0.0"


class MLP(nn.Module):
    """Three fully connected layers, 784 -> 512 -> 256 -> 10, ReLU between them."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; identity shortcut when shapes match."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int):
        super().__init__()
        hidden = inputs * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Style(nn.Module):
    """The MobileNetV2 layout (width 1.0): stem, 17 inverted residual blocks, 1x1 head, classifier."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, channels = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
        for expand, outputs, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, outputs, stride if index == 0 else 1, expand))
                channels = outputs
        layers += [nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).mean(dim=(2, 3)))


class TransformerEncoder(nn.Module):
    """Post-norm transformer encoder written out (no fused nn.MultiheadAttention fast path)."""

    def __init__(self, layers: int = 4, width: int = 256, heads: int = 4, ffn: int = 1024):
        super().__init__()
        self.heads = heads
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "qkv": nn.Linear(width, 3 * width), "out": nn.Linear(width, width), "norm1": nn.LayerNorm(width),
            "ffn1": nn.Linear(width, ffn), "ffn2": nn.Linear(ffn, width), "norm2": nn.LayerNorm(width),
        }) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head = width // self.heads
        for block in self.blocks:
            q, k, v = block["qkv"](x).reshape(batch, length, 3, self.heads, head).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / head ** 0.5, dim=-1)
            mixed = (attention @ v).transpose(1, 2).reshape(batch, length, width)
            x = block["norm1"](x + block["out"](mixed))
            x = block["norm2"](x + block["ffn2"](torch.relu(block["ffn1"](x))))
        return x


def _ready(model: nn.Module, *example: torch.Tensor) -> nn.Module:
    model.eval()
    model.example_inputs = example
    return model


def mlp() -> nn.Module:
    """MLP at batch 1 (1x784)."""
    torch.manual_seed(0)
    return _ready(MLP(), torch.zeros(1, 784))


def mobilenet_v2_style() -> nn.Module:
    """MobileNetV2 layout at 1x3x224x224."""
    torch.manual_seed(0)
    return _ready(MobileNetV2Style(), torch.zeros(1, 3, 224, 224))


def transformer_encoder() -> nn.Module:
    """4 layers, d=256, 4 heads, FFN 1024, sequence 128, batch 1."""
    torch.manual_seed(0)
    return _ready(TransformerEncoder(), torch.zeros(1, 128, 256))
