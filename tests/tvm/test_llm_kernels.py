"""The int8/int4 weight-matmul kernel over the interleaved layout against numpy's dequantize + matmul."""

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
