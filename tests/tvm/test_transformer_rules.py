"""Matmuls over 197 tokens (a prime) are padded so the heuristic can tile them, and still match ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models import attention_scores_onnx

pytestmark = pytest.mark.tvm

TOKENS = 197


def test_padding_only_where_no_tile_divides():
    from edgepack.compiler.transformer_rules import matmul_padding

    # Q K^T of a ViT: both output axes padded to 200 (8 lanes), the batch/head axes and the reduction kept
    assert matmul_padding([(1, True), (3, True), (TOKENS, True), (TOKENS, True), (64, False)], 8) == [1, 1, 8, 8, 1]
    # a projection: 197 rows padded, 576 columns already divide into vectors
    assert matmul_padding([(1, True), (TOKENS, True), (576, True), (192, False)], 8) == [1, 8, 1, 1]
    # BERT's 128 tokens and a batch-1 classifier tile as they are
    assert matmul_padding([(1, True), (4, True), (128, True), (128, True), (64, False)], 8) is None
    assert matmul_padding([(1, True), (1000, True), (512, False)], 8) is None
    assert matmul_padding([(1, True), (-1, True), (64, False)], 8) is None


def test_padded_attention_matmul_is_tiled_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    import tvm
    from tvm import relax, tirx

    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax
    from edgepack.compiler.schedules import cpu_schedule_pass, ScheduleReport
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    path = attention_scores_onnx(tmp_path / "scores.onnx")
    model, _ = preflight(path, {}, tmp_path)
    module, params = import_relax(model)
    target = load_target("x86_64").tvm_target()
    report = ScheduleReport()
    with target:
        module = cpu_schedule_pass(report, 8)(lower_to_tir(module, target))
        executable = relax.build(module, target=target)
    assert not report.failed
    kernels = [f.script() for f in module.functions.values() if isinstance(f, tirx.PrimFunc)]
    matmul = next(script for script in kernels if "matmul" in script)
    assert "T.int64(200), T.int64(200))" in matmul and "T.vectorized(T.int64(8))" in matmul
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 3, TOKENS, 64)).astype(np.float32)
    k = rng.standard_normal((1, 3, 64, TOKENS)).astype(np.float32)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), *params["main"]).numpy()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"q": q, "k": k})[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
