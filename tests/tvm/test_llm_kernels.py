"""The fp32 and int8/int4 weight-matmul kernels over the interleaved layout against numpy's (dequantize +) matmul."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("bits,columns,out,group,lanes", [
    (4, 48, 37, 16, 8),   # 3 groups, out not a multiple of the 32-row tile
    (4, 50, 70, 32, 16),  # 32 does not divide 50: one group per row; AVX-512's interleave
    (8, 40, 45, 8, 4),    # NEON's interleave (8 vectors per tile)
    (8, 30, 33, 32, 8),
])
def test_quantized_linear_equals_numpy_dequantize_and_matmul(bits, columns, out, group, lanes):
    import tvm

    from edgepack.llm.kernels import quantized_linear_function
    from edgepack.llm.weights import QuantScheme, block_matrix, dequantize_matrix, quantize_matrix, unblock_matrix

    rng = np.random.default_rng(bits + columns)
    scheme = QuantScheme(bits, group)
    q, scale = quantize_matrix(rng.standard_normal((out, columns)).astype(np.float32), scheme)
    blocked_q, blocked_scale = block_matrix(q, scale, lanes)
    restored = unblock_matrix(blocked_q, blocked_scale, out)
    assert np.array_equal(restored[0], q) and np.array_equal(restored[1], scale)
    x = rng.standard_normal((3, columns)).astype(np.float32)
    expected = x.astype(np.float64) @ dequantize_matrix(q, scale, scheme).astype(np.float64).T

    function = quantized_linear_function(columns, out, scheme, lanes).with_attr("global_symbol", "main")
    library = tvm.compile(function, target={"kind": "llvm"})
    for rows in (1, 3):  # decode's single row and a prefill's several
        y = tvm.runtime.tensor(np.full((rows, out), np.nan, np.float32))
        library(tvm.runtime.tensor(x[:rows]), tvm.runtime.tensor(blocked_q), tvm.runtime.tensor(blocked_scale), y)
        np.testing.assert_allclose(y.numpy(), expected[:rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("columns,out,lanes", [(48, 37, 8), (50, 70, 16), (40, 45, 4)])
def test_fp32_linear_over_interleaved_rows_equals_numpy_matmul(columns, out, lanes):
    import tvm

    from edgepack.llm.kernels import fp32_linear_function
    from edgepack.llm.weights import interleave_rows

    rng = np.random.default_rng(columns)
    weight = rng.standard_normal((out, columns)).astype(np.float32)
    x = rng.standard_normal((3, columns)).astype(np.float32)
    library = tvm.compile(fp32_linear_function(columns, out, lanes).with_attr("global_symbol", "main"), target={"kind": "llvm"})
    for rows in (1, 3):
        y = tvm.runtime.tensor(np.full((rows, out), np.nan, np.float32))
        library(tvm.runtime.tensor(x[:rows]), tvm.runtime.tensor(interleave_rows(weight, lanes, 0.0)), y)
        np.testing.assert_allclose(y.numpy(), x[:rows].astype(np.float64) @ weight.T.astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads,dim,lanes,start", [(4, 2, 16, 16, 5), (3, 1, 12, 8, 0), (2, 2, 6, 4, 9)])
def test_decode_attention_equals_numpy_softmax_over_the_cache(heads, kv_heads, dim, lanes, start):
    """One new token's attention over cache positions 0..start of one layer (grouped-query heads), against numpy."""
    import tvm

    from edgepack.llm.kernels import decode_attention_function

    rng = np.random.default_rng(dim + start)
    cache_shape = (2, 2, 10, kv_heads, dim)
    cache = rng.standard_normal(cache_shape).astype(np.float32)
    q = rng.standard_normal((1, heads, dim)).astype(np.float32)
    library = tvm.compile(decode_attention_function(cache_shape, heads, lanes).with_attr("global_symbol", "main"),
                          target={"kind": "llvm"})
    out = tvm.runtime.tensor(np.full((1, heads * dim), np.nan, np.float32))
    library(tvm.runtime.tensor(q), tvm.runtime.tensor(cache), 1, start, out)
    keys, values = cache[1, 0, :start + 1], cache[1, 1, :start + 1]  # [positions, kv_heads, dim]
    expected = []
    for h in range(heads):
        scores = keys[:, h // (heads // kv_heads)] @ q[0, h] / np.sqrt(dim)
        weights = np.exp(scores - scores.max())
        expected.append(weights @ values[:, h // (heads // kv_heads)] / weights.sum())
    np.testing.assert_allclose(out.numpy(), np.concatenate(expected)[None], rtol=1e-5, atol=1e-5)


def _needs_vnni():
    from edgepack.runtime.bundle_format import cpu_features

    return pytest.mark.skipif("avx512_vnni" not in cpu_features(), reason="this CPU has no avx512_vnni (vpdpbusd)")


@_needs_vnni()
@pytest.mark.parametrize("bits,columns,out,group", [
    (4, 96, 70, 32),  # 3 groups, out not a multiple of the 32-row tile
    (8, 64, 40, 16),
    (4, 48, 33, 48),  # one group of 6 loads
])
def test_integer_dot_kernels_compute_the_quantized_sums_exactly(tmp_path, bits, columns, out, group):
    """The quantizer's int8 row, scales and corrections equal numpy's; the vpdpbusd kernel's result equals
    Σ_groups (Σ w·xq) · w_scale · x_scale; against the fp32 row it is within half an activation step per input."""
    import shutil
    import subprocess

    import tvm

    from edgepack.llm.dot_kernels import integer_linear_function, quantize_rows_function, quantized_position
    from edgepack.llm.weights import QuantScheme, block_matrix, dequantize_matrix, quantize_matrix
    from edgepack.targets import load_target

    target = load_target("x86_64-vnni").tvm_target()
    rng = np.random.default_rng(bits + columns)
    scheme = QuantScheme(bits, group)
    q, scale = quantize_matrix(rng.standard_normal((out, columns)).astype(np.float32), scheme)
    x = rng.standard_normal((1, columns)).astype(np.float32)
    x[0, :group] = 0  # an all-zero group: scale 0, no division by zero
    groups = columns // group

    quantized = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in
                 (((1, columns), np.int8), ((1, groups), np.float32), ((1, groups), np.int32))]
    tvm.compile(quantize_rows_function(1, columns, scheme).with_attr("global_symbol", "main"), target=target)(
        tvm.runtime.tensor(x), *quantized)
    peak = np.abs(x.reshape(groups, group)).max(axis=1)
    inverse = np.divide(127, peak, out=np.zeros_like(peak), where=peak > 0)
    xq = np.rint(x.reshape(groups, group) * inverse[:, None]).astype(np.int32).reshape(columns)
    stored = quantized[0].numpy()[0, [quantized_position(k, scheme) for k in range(columns)]]
    assert np.array_equal(stored, xq)
    np.testing.assert_allclose(quantized[1].numpy()[0], peak / 127, rtol=1e-6)
    offset = 8 if bits == 4 else 128
    assert np.array_equal(quantized[2].numpy()[0], -offset * xq.reshape(groups, group).sum(axis=1))

    library = tvm.compile(integer_linear_function(1, columns, out, scheme).with_attr("global_symbol", "main"), target=target)
    y = tvm.runtime.tensor(np.full((1, out), np.nan, np.float32))
    library(*quantized, *(tvm.runtime.tensor(a) for a in block_matrix(q, scale, 16)), y)
    weights = dequantize_matrix(q, scale, scheme).reshape(out, groups, group) / scale[:, :, None]  # the integers
    sums = np.einsum("ogk,gk->og", np.rint(weights).astype(np.int64), xq.reshape(groups, group))
    expected = (sums * scale * (peak / 127)).sum(axis=1)
    np.testing.assert_allclose(y.numpy()[0], expected, rtol=1e-5, atol=1e-5)
    fp32 = x @ dequantize_matrix(q, scale, scheme).T
    bound = (np.abs(dequantize_matrix(q, scale, scheme)).reshape(out, groups, group).sum(axis=2) * peak / 127 / 2).sum(axis=1)
    assert np.all(np.abs(y.numpy()[0] - fp32[0]) <= bound + 1e-4)

    if shutil.which("objdump"):
        library.export_library(str(tmp_path / "kernel.so"))
        assembly = subprocess.run(["objdump", "-d", str(tmp_path / "kernel.so")], capture_output=True, text=True).stdout
        assert "vpdpbusd" in assembly
