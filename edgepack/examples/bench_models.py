"""Models of the benchmark suite (scripts/bench_suite.py) not covered by digits.py and resnet.py: MLP, MobileNetV2,
transformer, ShuffleNetV2, EfficientNet-B0, ConvNeXt-Tiny, DeiT-Tiny (ViT) and BERT-style layouts.

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



def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups (reshape, transpose, reshape)."""
    batch, channels, height, width = x.shape
    return x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, channels, height, width)


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(outputs)]
    return nn.Sequential(*layers, act) if act is not None else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, channel shuffle."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.stride = stride
        half = outputs // 2
        branch_in = inputs if stride == 2 else half
        if stride == 2:
            self.left = nn.Sequential(_conv_bn(inputs, inputs, 3, 2, inputs), _conv_bn(inputs, half, 1, act=nn.ReLU()))
        self.right = nn.Sequential(_conv_bn(branch_in, half, 1, act=nn.ReLU()), _conv_bn(half, half, 3, stride, half),
                                   _conv_bn(half, half, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)
            out = torch.cat((kept, self.right(x)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Style(nn.Module):
    """The ShuffleNetV2 1.0x layout: stem, three stages of shuffle units (4, 8, 4), 1x1 head, classifier."""

    def __init__(self, classes: int = 1000, widths: tuple[int, ...] = (116, 232, 464), repeats: tuple[int, ...] = (4, 8, 4)):
        super().__init__()
        layers, channels = [_conv_bn(3, 24, 3, 2, act=nn.ReLU()), nn.MaxPool2d(3, 2, 1)], 24
        for width, repeat in zip(widths, repeats):
            for index in range(repeat):
                layers.append(ShuffleUnit(channels, width, 2 if index == 0 else 1))
                channels = width
        layers.append(_conv_bn(channels, 1024, 1, act=nn.ReLU()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1024, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average, two 1x1 convolutions (SiLU, sigmoid), channel scaling."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """EfficientNet block: 1x1 expand (SiLU), depthwise kxk (SiLU), squeeze-excitation, 1x1 project."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = inputs * expand
        layers = [_conv_bn(inputs, hidden, 1, act=nn.SiLU())] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, kernel, stride, hidden, act=nn.SiLU()), SqueezeExcite(hidden, max(1, inputs // 4)),
                   _conv_bn(hidden, outputs, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class EfficientNetB0Style(nn.Module):
    """The EfficientNet-B0 layout: stem, 16 MBConv blocks with SE and SiLU, 1x1 head, classifier."""

    SETTINGS = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))  # expand, outputs, repeats, stride, kernel

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, channels = [_conv_bn(3, 32, 3, 2, act=nn.SiLU())], 32
        for expand, outputs, repeats, stride, kernel in self.SETTINGS:
            for index in range(repeats):
                layers.append(MBConv(channels, outputs, kernel, stride if index == 0 else 1, expand))
                channels = outputs
        layers.append(_conv_bn(channels, 1280, 1, act=nn.SiLU()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).mean(dim=(2, 3)))


class ChannelsLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permute, normalise, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise, LayerNorm, 4x pointwise MLP with GELU, layer scale, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.scale = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.depthwise(x).permute(0, 2, 3, 1))) * self.scale
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStyle(nn.Module):
    """ConvNeXt-Tiny layout: 4x4 patch stem, stages of (3, 3, 9, 3) blocks at widths 96-768, 2x2 downsampling."""

    def __init__(self, classes: int = 1000, depths: tuple[int, ...] = (3, 3, 9, 3), widths: tuple[int, ...] = (96, 192, 384, 768)):
        super().__init__()
        layers = [nn.Conv2d(3, widths[0], 4, 4), ChannelsLayerNorm(widths[0])]
        for index, (depth, width) in enumerate(zip(depths, widths)):
            if index:
                layers += [ChannelsLayerNorm(widths[index - 1]), nn.Conv2d(widths[index - 1], width, 2, 2)]
            layers += [ConvNeXtBlock(width) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(widths[-1])
        self.classifier = nn.Linear(widths[-1], classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.features(image).mean(dim=(2, 3))))


class EncoderLayer(nn.Module):
    """Transformer encoder layer written out: multi-head attention and a GELU MLP, pre- or post-norm."""

    def __init__(self, width: int, heads: int, ffn: int, pre_norm: bool):
        super().__init__()
        self.heads, self.pre_norm = heads, pre_norm
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head = width // self.heads
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, head).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / head ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.mlp(x))


class ViTStyle(nn.Module):
    """DeiT-Tiny layout: 16x16 patches, class token, 12 pre-norm layers at d=192 with 3 heads, classifier."""

    def __init__(self, classes: int = 1000, image: int = 224, patch: int = 16, width: int = 192, depth: int = 12, heads: int = 3):
        super().__init__()
        self.patches = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(width, heads, 4 * width, pre_norm=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(image).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls.expand(tokens.shape[0], -1, -1), tokens), dim=1) + self.position
        return self.classifier(self.norm(self.layers(tokens))[:, 0])


class BertStyle(nn.Module):
    """BERT-style encoder: token and position embeddings, LayerNorm, post-norm layers with GELU MLPs."""

    def __init__(self, vocab: int = 30522, length: int = 128, width: int = 256, depth: int = 4, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(1, length, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.layers = nn.Sequential(*(EncoderLayer(width, heads, 4 * width, pre_norm=False) for _ in range(depth)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers(self.norm(self.tokens(input_ids) + self.position))

def _normalized(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """BatchNorm statistics from one batch of random images, so activations keep unit scale through deep random
    nets (with the default statistics EfficientNet's features shrink to ~1e-12 and every output equals the bias)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(2, *shape[1:]))
    return model


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


def shufflenet_v2_style() -> nn.Module:
    """ShuffleNetV2 1.0x layout at 1x3x224x224."""
    torch.manual_seed(0)
    return _ready(_normalized(ShuffleNetV2Style(), (1, 3, 224, 224)), torch.zeros(1, 3, 224, 224))


def efficientnet_b0_style() -> nn.Module:
    """EfficientNet-B0 layout at 1x3x224x224."""
    torch.manual_seed(0)
    return _ready(_normalized(EfficientNetB0Style(), (1, 3, 224, 224)), torch.zeros(1, 3, 224, 224))


def convnext_style() -> nn.Module:
    """ConvNeXt-Tiny layout at 1x3x224x224."""
    torch.manual_seed(0)
    return _ready(ConvNeXtStyle(), torch.zeros(1, 3, 224, 224))


def vit_tiny_style() -> nn.Module:
    """DeiT-Tiny layout at 1x3x224x224."""
    torch.manual_seed(0)
    return _ready(ViTStyle(), torch.zeros(1, 3, 224, 224))


def bert_style() -> nn.Module:
    """BERT-style encoder, 4 layers, d=256, 4 heads, sequence 128, int64 token ids."""
    torch.manual_seed(0)
    return _ready(BertStyle(), torch.zeros(1, 128, dtype=torch.int64))
