"""Reductions whose register tile has no inner loop (edgepack.compiler.schedules) still compute exact results.

When no vector or row factor divides a reduction's output extents (a batch-1 MatMul with a prime number of
outputs between two vectors' worth of lanes and 64), the tile is the bare outer loop. The heuristic used to
vectorize that loop through its write-back block, around the reduction, and TVM compacts the accumulator to one
element per iteration: every lane added into one scalar (all outputs equal). The breast-cancer tree student
(x·A with A 30×17, then `≤ B`) was refused by the build's verification for this. Inputs and weights here are small
integers, so every sum is exact in float32 in any order and results must be bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm

FEATURES = 30


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: dict) -> Path:
    import onnx

    graph = helper.make_graph(nodes, path.stem, inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _tree_split(path: Path, nodes_count: int = 17) -> Path:
    """The tree student's first kernel: Cast(x·A ≤ B) with A one-hot (FEATURES × nodes_count), batch 1."""
    rs = np.random.RandomState(0)
    selector = np.zeros((FEATURES, nodes_count), np.float32)
    selector[rs.randint(0, FEATURES, nodes_count), np.arange(nodes_count)] = 1.0
    thresholds = rs.randint(-3, 4, nodes_count).astype(np.float32) + 0.5
    return _save(path, [helper.make_node("MatMul", ["x", "A"], ["selected"]),
                        helper.make_node("LessOrEqual", ["selected", "B"], ["left"]),
                        helper.make_node("Cast", ["left"], ["y"], to=TensorProto.FLOAT)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, nodes_count])], {"A": selector, "B": thresholds})


def _linear(path: Path, outputs: int) -> Path:
    """A batch-1 classifier head: Gemm(transB=1) + bias (as torch exports nn.Linear), `outputs` classes."""
    rs = np.random.RandomState(1)
    return _save(path, [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs])],
                 {"W": rs.randint(-3, 4, (outputs, FEATURES)).astype(np.float32),
                  "b": rs.randint(-3, 4, outputs).astype(np.float32)})


def _channel_mean(path: Path, channels: int) -> Path:
    """GlobalAveragePool over `channels` channels of 4×4 (a CNN's pooling before its head), batch 1."""
    return _save(path, [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])], {})


def _compiled_outputs(path: Path, workdir: Path, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """Compile with edgepack for x86_64 (heuristic schedules) and run through the TVM runtime."""
    import tvm
    from tvm import relax

    from edgepack.compiler.compile import CompileConfig, compile_model
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    workdir.mkdir(parents=True, exist_ok=True)
    model, _ = preflight(path, {}, workdir)
    compiled, record = compile_model(model, load_target("x86_64"), workdir, CompileConfig())
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(compiled.library)), tvm.cpu())
    data = compiled.params.read_bytes()
    if compiled.params.suffix == ".sparse":
        from edgepack.bundle.sparse_params import decode

        data = decode(data)
    params = tvm.runtime.load_param_dict(data)
    weights = [params[name] for name in compiled.param_names]
    return [vm["main"](tvm.runtime.tensor(x), *weights).numpy() for x in inputs], record.report["kernels"]


@pytest.mark.parametrize("program", ["tree_split_17", "tree_split_43", "linear_17", "linear_61", "channel_mean_19"])
def test_untileable_reduction_matches_onnxruntime_exactly(tmp_path, program):
    import onnxruntime as ort

    kind, size = program.rsplit("_", 1)
    make = {"tree_split": _tree_split, "linear": _linear, "channel_mean": _channel_mean}[kind]
    path = make(tmp_path / f"{program}.onnx", int(size))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    rs = np.random.RandomState(2)
    # channel means of integers divide by 16 exactly; for the others integers keep every sum exact
    inputs = [rs.randint(-4, 5, spec.shape).astype(np.float32) for _ in range(4)]
    ours, kernels = _compiled_outputs(path, tmp_path / "build", inputs)
    assert kernels["heuristic"] >= 1 and not kernels["unscheduled"], kernels  # scheduled, not left naive
    for got, x in zip(ours, inputs):
        want = session.run(None, {spec.name: x})[0]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("rows,outputs", [(1, 11), (1, 17), (1, 37), (1, 61), (17, 1), (3, 17)])
def test_heuristic_matmul_equals_naive_loops(lanes, rows, outputs):
    """The heuristic's matmul kernel against TVM's unscheduled loops for each vector width edgepack targets
    (NEON/SSE 4, AVX2 8, AVX-512 16 lanes), at extents no vector or row factor divides."""
    import tvm
    from tvm import te

    from edgepack.compiler.schedules import schedule_function

    x = te.placeholder((rows, FEATURES), "float32", name="x")
    w = te.placeholder((FEATURES, outputs), "float32", name="w")
    k = te.reduce_axis((0, FEATURES), "k")
    product = te.compute((rows, outputs), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    naive = te.create_prim_func([x, w, product])
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"})
    rs = np.random.RandomState(3)
    args = [rs.randint(-3, 4, (rows, FEATURES)).astype(np.float32), rs.randint(-3, 4, (FEATURES, outputs)).astype(np.float32)]
    results = []
    for func in (naive, schedule_function(naive, lanes)):
        kernel = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=target)
        tensors = [tvm.runtime.tensor(a) for a in args] + [tvm.runtime.tensor(np.zeros((rows, outputs), np.float32))]
        kernel(*tensors)
        results.append(tensors[-1].numpy())
    np.testing.assert_array_equal(results[1], args[0] @ args[1])
    np.testing.assert_array_equal(results[1], results[0])
