"""Tiny models built in code, and helpers that turn them into ONNX files or factory files.

Each nn.Module sets `example_inputs`, so `edgepack build file.py:factory` needs no `--input`.
Weights (and BatchNorm statistics) come from fixed seeds: two calls of a factory give the same model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

TESTS_DIR = Path(__file__).resolve().parent


class MLP(nn.Module):
    """x[1,4] -> Linear(4,8) -> ReLU -> Linear(8,3)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.example_inputs = (torch.zeros(1, 4),)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """image[1,3,8,8] -> Conv-BN-ReLU -> residual Conv-BN add -> ReLU -> avg pool -> Linear(8,5)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)
        for bn in (self.stem[1], self.block[1]):  # non-trivial statistics, or BN folds to identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
        self.example_inputs = (torch.zeros(1, 3, 8, 8),)
        self.eval()

    def forward(self, image):
        features = self.stem(image)
        features = torch.relu(features + self.block(features))
        return self.head(features.mean(dim=(2, 3)))


class TwoInTwoOut(nn.Module):
    """(a[1,4], b[1,6]) -> (Linear(a) + Linear(b) as [1,3], 2*tanh(b) as [1,6])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fa = nn.Linear(4, 3)
        self.fb = nn.Linear(6, 3)
        self.example_inputs = (torch.zeros(1, 4), torch.zeros(1, 6))

    def forward(self, a, b):
        return self.fa(a) + self.fb(b), 2 * torch.tanh(b)


def mlp() -> nn.Module:
    return MLP().eval()


def small_cnn() -> nn.Module:
    return SmallCNN().eval()


def two_in_two_out() -> nn.Module:
    return TwoInTwoOut().eval()


class MixedConvs(nn.Module):
    """A 3-channel stem, a stride-2 and a residual blocked pair, stride-1 and stride-2 depthwise convs, a grouped
    conv and a 10-channel 1x1 head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.same = nn.Conv2d(32, 32, 3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.depthwise_down = nn.Conv2d(32, 32, 5, stride=2, padding=2, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        y = torch.relu(self.down(torch.relu(self.stem(x))))
        y = torch.relu(self.same(y) + y)
        y = self.grouped(torch.relu(self.depthwise_down(torch.relu(self.depthwise(y)))))
        return self.head(y).mean(dim=(2, 3))


class WinogradConvs(nn.Module):
    """Blocked 3x3 stride-1 convolutions with bias, ReLU and a residual add: at 64 channels and 26x26 (the last tiles
    partial) and at 128 channels and 13x13 after a stride-2 one (F(2,3) there at 16 lanes), between a 3-channel stem
    and a 1x1 head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.same = nn.Conv2d(64, 64, 3, padding=1)
        self.widen = nn.Conv2d(64, 128, 3, padding=1)
        self.down = nn.Conv2d(128, 128, 3, stride=2, padding=1)
        self.small = nn.Conv2d(128, 128, 3, padding=1)
        self.head = nn.Conv2d(128, 10, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.same(y)) + y
        y = torch.relu(self.down(torch.relu(self.widen(y))))
        y = torch.relu(self.small(y) + y)
        return self.head(y).mean(dim=(2, 3))


def winograd_convs_onnx(directory: Path):
    """WinogradConvs at 1x3x26x26 as an OnnxModel artifact (input x, output y)."""
    from edgepack.artifacts import OnnxModel
    from edgepack.runtime.bundle_format import TensorSpec

    path = directory / "winograd.onnx"
    torch.onnx.export(WinogradConvs().eval(), (torch.zeros(1, 3, 26, 26),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)
    return OnnxModel.at(path, [TensorSpec("x", "float32", (1, 3, 26, 26))], [TensorSpec("y", "float32", (1, 10))])


class ClippedConvs(nn.Module):
    """MobileNetV2/V3 activations between blockable convolutions: ReLU6 (ONNX Clip), Hardswish and a squeeze-excite
    gate with Hardsigmoid (both imported as `R.clip`); a 3-channel stem and a 10-channel head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.squeeze = nn.Conv2d(32, 16, 1)
        self.excite = nn.Conv2d(16, 32, 1)
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        y = nn.functional.relu6(self.stem(x))
        z = nn.functional.hardswish(self.depthwise(nn.functional.relu6(self.expand(y))))
        z = z * nn.functional.hardsigmoid(self.excite(torch.relu(self.squeeze(z.mean(dim=(2, 3), keepdim=True)))))
        return self.head(y + self.project(z)).mean(dim=(2, 3))


class MixedWidths(nn.Module):
    """MobileNetV2-style inverted residuals whose channels are multiples of 16 (32, 48) and of 8 only (24, 40):
    on AVX-512 some convolutions can block by 16, the others by 8 only; a 3-channel stem and a 10-channel head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.project = nn.Conv2d(32, 24, 1)
        self.expand = nn.Conv2d(24, 48, 1)
        self.depthwise = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.back = nn.Conv2d(48, 24, 1)
        self.widen = nn.Conv2d(24, 40, 3, stride=2, padding=1)
        self.depthwise40 = nn.Conv2d(40, 40, 3, padding=1, groups=40)
        self.head = nn.Conv2d(40, 10, 1)

    def forward(self, x):
        y = self.project(nn.functional.relu6(self.stem(x)))
        y = y + self.back(nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(y)))))
        y = nn.functional.relu6(self.depthwise40(torch.relu(self.widen(y))))
        return self.head(y).mean(dim=(2, 3))


def conv_model_onnx(directory: Path, module: nn.Module, opset: int | None = None):
    """A convolutional test model at 1x3x16x16 as an OnnxModel artifact (input x, output y, 10 classes)."""
    from edgepack.artifacts import OnnxModel
    from edgepack.runtime.bundle_format import TensorSpec

    path = directory / f"{type(module).__name__.lower()}{opset or ''}.onnx"
    torch.onnx.export(module.eval(), (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False, **({"opset_version": opset} if opset else {}))
    return OnnxModel.at(path, [TensorSpec("x", "float32", (1, 3, 16, 16))], [TensorSpec("y", "float32", (1, 10))])


def mixed_convs_onnx(directory: Path):
    """MixedConvs at 1x3x16x16 as an OnnxModel artifact (input x, output y)."""
    from edgepack.artifacts import OnnxModel
    from edgepack.runtime.bundle_format import TensorSpec

    path = directory / "mixed.onnx"
    torch.onnx.export(MixedConvs().eval(), (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    return OnnxModel.at(path, [TensorSpec("x", "float32", (1, 3, 16, 16))], [TensorSpec("y", "float32", (1, 10))])


def tiny_shufflenet_onnx(path: Path) -> Path:
    """ShuffleNetV2's units (bench_models) at 16 and 30 channels (branches of 15: padded to 16), two units per stage, 1x3x32x32."""
    from edgepack.examples.bench_models import ShuffleNetV2Style

    torch.manual_seed(4)
    model = ShuffleNetV2Style(classes=10, widths=(16, 30), repeats=(2, 2)).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, folded into the convolutions on export
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return path


FACTORIES = {"mlp": mlp, "small_cnn": small_cnn, "two_in_two_out": two_in_two_out}


def input_names(module: nn.Module) -> list[str]:
    """forward()'s parameter names: the ONNX input names edgepack uses for a factory."""
    import inspect

    return [name for name in inspect.signature(module.forward).parameters]


def export_onnx(module: nn.Module, path: Path) -> Path:
    """Write `module` to `path` with torch.onnx.export(dynamo=True), inputs named after forward()."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(module.eval(), module.example_inputs, str(path), dynamo=True,
                          input_names=input_names(module), external_data=False)
    return Path(path)


def write_factory_file(path: Path, factory: str) -> Path:
    """A stand-alone `file.py` whose function `factory` returns the tests' model of that name."""
    assert factory in FACTORIES, factory
    Path(path).write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        f"from models import {factory}\n"
        "__version__ = '2.3.4'\n",
        encoding="utf-8",
    )
    return Path(path)


def unsupported_op_onnx(path: Path) -> Path:
    """y = Det(x) of 5x5 matrices: valid ONNX that ONNX Runtime runs, TVM's ONNX frontend cannot import, ONNX
    defines with no function body to expand, and pre-flight does not rewrite (it expands Det up to 4x4; Celu was
    the example until pre-flight learned to expand function ops)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def torch_outputs(module: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The module's outputs on numpy inputs, as a list of numpy arrays."""
    with torch.no_grad():
        result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


def activations_onnx(path: Path) -> Path:
    """softmax(x) + gelu(x) + sigmoid(x) + tanh(x) + erf(x) + exp(x / 8), x: 4x96 (one op each, opset 20)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    eighth = numpy_helper.from_array(np.array(0.125, np.float32), "eighth")
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1), helper.make_node("Gelu", ["x"], ["g"]),
             helper.make_node("Sigmoid", ["x"], ["sg"]), helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Mul", ["x", "eighth"], ["x8"]),
             helper.make_node("Exp", ["x8"], ["ex"])]
    total = "s"
    for index, name in enumerate(("g", "sg", "t", "e", "ex")):
        out = "y" if index == 4 else f"sum{index}"
        nodes.append(helper.make_node("Add", [total, name], [out]))
        total = out
    graph = helper.make_graph(nodes, "activations", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 96])], [eighth])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def attention_scores_onnx(path: Path, tokens: int = 197) -> Path:
    """scores = (q @ k) / 8 + bias, q: 1x3xTx64, k: 1x3x64xT (a ViT's attention logits at T = 197 tokens)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(rng.standard_normal(tokens).astype(np.float32), "bias")
    eight = numpy_helper.from_array(np.array(8.0, np.float32), "eight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["q", "k"], ["s"]), helper.make_node("Div", ["s", "eight"], ["d"]),
         helper.make_node("Add", ["d", "bias"], ["y"])], "scores",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 3, tokens, 64]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 3, 64, tokens])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, tokens, tokens])], [bias, eight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def mlp_with_dynamic_batch(path: Path) -> Path:
    """x[N,30] -> MatMul 30x16 + bias -> Relu -> MatMul 16x5 + bias -> y[N,5]; the batch axis is named N."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (30, 16)), ("b1", (16,)), ("w2", (16, 5)), ("b2", (5,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 30])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def bfloat16_onnx(path: Path) -> Path:
    """x: bfloat16[2,5] -> (y = float32(x) * 1.5 + 0.25: float32, z = bfloat16(y))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "a"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"]),
             helper.make_node("Cast", ["y"], ["z"], to=TensorProto.BFLOAT16)]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5]),
                               helper.make_tensor_value_info("z", TensorProto.BFLOAT16, [2, 5])],
                              [numpy_helper.from_array(np.array(1.5, np.float32), "a"),
                               numpy_helper.from_array(np.array(0.25, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


FLOAT8_SWEEP = np.array([0.0, -0.0, 1e-3, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 448.0, 464.0, 470.0, 1e6, np.inf, -np.inf, np.nan,
                         0.3, -17.3, 240.0, 1.0625, 1.1875, -1e-9, 57344.0], np.float32)


def float8_onnx(path: Path) -> Path:
    """x: float32[20], w: float8e4m3fn[4] -> (Cast(x) to float8e4m3fn (saturating), QuantizeLinear(x, 2, float8e5m2 0,
    saturate=0): float8e5m2, float32(w))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["y8"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], saturate=0),
             helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT)]
    zero = helper.make_tensor("zero", TensorProto.FLOAT8E5M2, [], [0.0])
    graph = helper.make_graph(nodes, "f8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(FLOAT8_SWEEP)]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT8E4M3FN, [4])],
                              [helper.make_tensor_value_info("y8", TensorProto.FLOAT8E4M3FN, [len(FLOAT8_SWEEP)]),
                               helper.make_tensor_value_info("q", TensorProto.FLOAT8E5M2, [len(FLOAT8_SWEEP)]),
                               helper.make_tensor_value_info("wf", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "scale"), zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


INT4_SWEEP = np.array([-9.0, -8.5, -4.25, -3.0, -0.5, 0.0, 0.25, 0.75, 1.5, 2.5, 3.5, 7.0, 7.9, 20.0], np.float32)


def int4_onnx(path: Path) -> Path:
    """x: float32[14], u: uint4[4] -> (QuantizeLinear(x, 0.5, int4 1): int4, its DequantizeLinear, float32(u))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
             helper.make_node("Cast", ["u"], ["uf"], to=TensorProto.FLOAT)]
    zero = helper.make_tensor("zero", TensorProto.INT4, [], [1])
    graph = helper.make_graph(nodes, "i4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(INT4_SWEEP)]),
                                            helper.make_tensor_value_info("u", TensorProto.UINT4, [4])],
                              [helper.make_tensor_value_info("q", TensorProto.INT4, [len(INT4_SWEEP)]),
                               helper.make_tensor_value_info("dq", TensorProto.FLOAT, [len(INT4_SWEEP)]),
                               helper.make_tensor_value_info("uf", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.array(0.5, np.float32), "scale"), zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path
